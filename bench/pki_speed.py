"""PKI: leaf certificates issued per second by meshfed vs ``openssl speed`` signatures per second.

Issuing a leaf is one key generation plus one signature by the mesh intermediate; openssl's
figure is signatures alone, the floor any issuer pays, measured in the same run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from meshfed.pki.certs import issue_leaf, make_intermediate_ca, make_root_ca
from meshfed.pki.keys import KeyAlgorithm, generate_key

OPENSSL_NAME = {"ECDSA_P256": "ecdsap256", "RSA_2048": "rsa2048", "RSA_4096": "rsa4096"}
SECONDS = 3.0


def meshfed_rate(alg: KeyAlgorithm) -> float:
    now = datetime.now(UTC)
    root_key = generate_key(alg)
    root = make_root_ca("bench root", root_key, timedelta(days=10), now)
    ca_key = generate_key(alg)
    ca = make_intermediate_ca(
        "bench", "bench.example", ca_key, root, root_key, timedelta(days=5), now
    )
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        key = generate_key(alg)
        issue_leaf(
            f"spiffe://bench.example/ns/n/sa/s{count}", key, ca, ca_key, timedelta(hours=24), now
        )
        count += 1
    return count / (time.perf_counter() - start)


def openssl_rate(alg: KeyAlgorithm) -> float:
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(int(SECONDS)), OPENSSL_NAME[alg]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # "... 256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0  12000.0" / "rsa 2048 bits ..."
    line = next(
        x
        for x in out.splitlines()
        if re.search(r"(nistp256|^rsa\s+\d+ bits)", x.strip()) and "s " in x
    )
    numbers = re.findall(r"\d+\.\d+", line)
    return float(numbers[2])  # sign/s


def main() -> list[dict[str, Any]]:
    rows = []
    for alg in ("ECDSA_P256", "RSA_2048"):
        ours, floor = meshfed_rate(alg), openssl_rate(alg)  # type: ignore[arg-type]
        rows.append(
            {
                "algorithm": alg,
                "meshfed_certs_per_s": ours,
                "openssl_signs_per_s": floor,
                "ratio": ours / floor,
            }
        )
        print(
            f"  {alg}: meshfed {ours:.0f} certs/s, openssl {floor:.0f} signs/s, "
            f"ratio {ours / floor:.2f}",
            file=sys.stderr,
        )
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
