"""The controls the audit evidences: NIST SP 800-53 Rev. 5 and PCI DSS v4.0.

Only controls and requirements whose number and subject are certain are listed. Checks refer to
them by id; the report summarises, per control, which checks pass and which fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Framework = Literal["NIST SP 800-53 Rev. 5", "PCI DSS v4.0"]
NIST: Framework = "NIST SP 800-53 Rev. 5"
PCI: Framework = "PCI DSS v4.0"


@dataclass(frozen=True)
class Control:
    id: str
    framework: Framework
    title: str


_CONTROLS = (
    Control("AC-3", NIST, "Access Enforcement"),
    Control("AC-4", NIST, "Information Flow Enforcement"),
    Control("AC-6", NIST, "Least Privilege"),
    Control("AU-2", NIST, "Event Logging"),
    Control("AU-12", NIST, "Audit Record Generation"),
    Control("CM-6", NIST, "Configuration Settings"),
    Control("IA-3", NIST, "Device Identification and Authentication"),
    Control("IA-5(2)", NIST, "Authenticator Management | Public Key-based Authentication"),
    Control("IA-9", NIST, "Service Identification and Authentication"),
    Control("SC-7", NIST, "Boundary Protection"),
    Control("SC-7(5)", NIST, "Boundary Protection | Deny by Default — Allow by Exception"),
    Control("SC-7(8)", NIST, "Boundary Protection | Route Traffic to Authenticated Proxy Servers"),
    Control("SC-7(11)", NIST, "Boundary Protection | Restrict Incoming Communications Traffic"),
    Control("SC-7(16)", NIST, "Boundary Protection | Prevent Discovery of System Components"),
    Control("SC-7(21)", NIST, "Boundary Protection | Isolation of System Components"),
    Control("SC-8", NIST, "Transmission Confidentiality and Integrity"),
    Control(
        "SC-8(1)", NIST, "Transmission Confidentiality and Integrity | Cryptographic Protection"
    ),
    Control("SC-12", NIST, "Cryptographic Key Establishment and Management"),
    Control("SC-17", NIST, "Public Key Infrastructure Certificates"),
    Control("SI-11", NIST, "Error Handling"),
    Control(
        "PCI 1.2.1", PCI, "Configuration standards for NSC rulesets are defined and implemented"
    ),
    Control(
        "PCI 1.2.5", PCI, "All services, protocols and ports allowed are identified and approved"
    ),
    Control("PCI 1.3.1", PCI, "Inbound traffic to the CDE is restricted"),
    Control("PCI 1.3.2", PCI, "Outbound traffic from the CDE is restricted"),
    Control("PCI 1.4.1", PCI, "NSCs are implemented between trusted and untrusted networks"),
    Control("PCI 1.4.2", PCI, "Inbound traffic from untrusted to trusted networks is restricted"),
    Control(
        "PCI 1.4.4",
        PCI,
        "System components that store cardholder data are not directly accessible from "
        "untrusted networks",
    ),
    Control(
        "PCI 1.4.5",
        PCI,
        "Disclosure of internal IP addresses and routing information is limited to "
        "authorized parties",
    ),
    Control(
        "PCI 4.2.1",
        PCI,
        "Strong cryptography protects PAN in transmission; certificates are valid and not expired",
    ),
    Control("PCI 10.2.1", PCI, "Audit logs are enabled and active for all system components"),
)

CONTROLS: dict[str, Control] = {c.id: c for c in _CONTROLS}


def control(control_id: str) -> Control:
    """The control with this id; KeyError for an id not in the catalogue (a typo in a check)."""
    return CONTROLS[control_id]


def sort_key(control_id: str) -> tuple[int, str, tuple[int, ...]]:
    """Order NIST before PCI; within, by family and numbers (SC-7 < SC-7(5) < SC-7(11))."""
    c = CONTROLS[control_id]
    text = c.id.removeprefix("PCI ")
    family = text.split("-")[0] if c.framework == NIST else ""
    digits = "".join(ch if ch.isdigit() else " " for ch in text).split()
    return (0 if c.framework == NIST else 1, family, tuple(int(d) for d in digits))
