"""``x-forwarded-client-cert``: parse it, and derive the caller a workload should believe.

Envoy writes elements separated by ``,``, key=value pairs separated by ``;``; a value containing
``,;="`` is double-quoted with ``\\"`` escapes.

The sidecar in front of a workload uses ``APPEND_FORWARD`` with the current peer's URI, so the
**last** element is always written by our own sidecar (``By`` = the workload, ``URI`` = the direct
peer). Only when that peer is the mesh's own ingress gateway is the element before it trusted:
the ingress sanitises what callers send and sets exactly one element for the verified caller.
"""

from __future__ import annotations

Element = dict[str, str]


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (quotes and escapes are kept for the next stage)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out: list[str] = []
        escaped = False
        for ch in value[1:-1]:
            if escaped or ch != "\\":
                out.append(ch)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def parse_xfcc(header: str) -> list[Element]:
    """Elements of an XFCC header, in order; keys as Envoy writes them (``By``, ``URI``, ...).

    A key that appears twice in one element (e.g. several ``URI``) keeps its first value.
    """
    elements: list[Element] = []
    for raw in _split(header, ","):
        if not raw.strip():
            continue
        element: Element = {}
        for pair in _split(raw, ";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip():
                element.setdefault(key.strip(), _unquote(value))
        elements.append(element)
    return elements


def caller_from_xfcc(header: str | None, own_id: str, ingress_id: str) -> str | None:
    """The verified caller of a workload with identity ``own_id``, or None.

    - no header, or a last element not written by our own sidecar (``By`` != ``own_id``): None;
    - direct peer = the last element's URI;
    - if the direct peer is the mesh ingress (``ingress_id``): the caller is the URI of the one
      element before it, which the ingress must have written (its ``By`` = ``ingress_id``);
    - otherwise the direct peer is the caller (anything it forwarded is ignored).
    """
    if not header:
        return None
    elements = parse_xfcc(header)
    if not elements:
        return None
    last = elements[-1]
    if last.get("By") != own_id:
        return None
    peer = last.get("URI")
    if not peer:
        return None
    if peer != ingress_id:
        return peer
    if len(elements) != 2:
        return None
    first = elements[0]
    if first.get("By") != ingress_id:
        return None
    return first.get("URI") or None
