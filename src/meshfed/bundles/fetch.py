"""The bundle endpoint client: one HTTPS GET, authenticated per profile (SPIFFE Federation 5.2).

- ``https_web``: the server certificate must chain to a Web PKI CA (the system's store, or
  ``web_ca`` for a private one) and name the URL's host (RFC 6125, Python's hostname check).
- ``https_spiffe``: the server certificate must be an X509-SVID of the configured endpoint
  SPIFFE ID, chaining to ``roots`` (the latest bundle of the endpoint's trust domain, or the
  bootstrap one for the first fetch of a self-serving endpoint). The URL's host is not checked:
  the SPIFFE ID is the server's identity.

Redirects are followed (at most ``MAX_REDIRECTS``) only to ``https`` URLs without userinfo, with
the same checks. The whole fetch, redirects included, must finish within ``timeout`` seconds, and
a body over ``MAX_DOCUMENT_BYTES`` is refused before it is read to the end. Every failure is a
BundleError naming the peer and saying what went wrong.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urljoin

from cryptography import x509

from meshfed.bundles.document import MAX_DOCUMENT_BYTES
from meshfed.bundles.errors import BundleError
from meshfed.bundles.model import Endpoint
from meshfed.pki.certs import certs_to_pem, spiffe_ids
from meshfed.spec.bundle_checks import split_bundle_url

DEFAULT_TIMEOUT = 10.0
MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


def _context(
    endpoint: Endpoint, roots: Sequence[x509.Certificate], web_ca: Path | None, insecure: bool
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if endpoint.profile == "https_web":
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if web_ca is not None:
            ctx.load_verify_locations(cafile=str(web_ca))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return ctx
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=certs_to_pem(roots).decode())
    return ctx


def _check_svid(der: bytes | None, endpoint: Endpoint, peer: str) -> None:
    if der is None:
        raise BundleError(peer, f"{endpoint.url} presented no certificate", None)
    leaf = x509.load_der_x509_certificate(der)
    ids = spiffe_ids(leaf)
    try:
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca or len(ids) != 1 or ids[0] != endpoint.spiffe_id:
        got = ", ".join(ids) or "no SPIFFE ID"
        raise BundleError(
            peer,
            f"{endpoint.url} presented {got}{' (a CA certificate)' if is_ca else ''}, not an "
            f"X509-SVID of {endpoint.spiffe_id}",
            "check the endpoint's SPIFFE ID in the spec (bundleEndpoint.spiffeId)",
        )


def _remaining(deadline: float, peer: str, url: str, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise BundleError(
            peer,
            f"{url} did not deliver its bundle within {timeout:g} s",
            "check that the bundle endpoint is up and reachable; the kept bundle stays in force",
        )
    return left


def _tls_problem(exc: ssl.SSLError, endpoint: Endpoint, url: str) -> str:
    reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    if endpoint.profile == "https_web":
        return (
            f"TLS: {url} is not authenticated as a Web PKI server for its host ({reason}); "
            "its certificate must chain to a trusted CA and name the URL's host"
        )
    return (
        f"TLS: {url} is not authenticated by the trust domain's bundle ({reason}); its "
        f"certificate must be an X509-SVID of {endpoint.spiffe_id} issued under that bundle"
    )


def fetch_document(
    endpoint: Endpoint,
    peer: str,
    *,
    roots: Sequence[x509.Certificate] = (),
    web_ca: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    insecure: bool = False,
) -> tuple[bytes, str]:
    """The body served at ``endpoint`` and the URL it finally came from.

    ``insecure`` skips authentication: only for the first step of a fingerprint bootstrap, whose
    result is checked against the fingerprint and fetched again authenticated.
    """
    if endpoint.profile == "https_spiffe" and not roots and not insecure:
        raise BundleError(
            peer,
            f"no bundle to authenticate {endpoint.url} with",
            "give the first bundle (bootstrapBundle or bootstrapFingerprint); meshfed never "
            "trusts a bundle endpoint on first use",
        )
    ctx = _context(endpoint, roots, web_ca, insecure)
    deadline = time.monotonic() + timeout
    url = endpoint.url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            host, port, path = split_bundle_url(url)
        except ValueError as exc:
            raise BundleError(peer, f"redirected to an invalid bundle endpoint: {exc}") from None
        conn = http.client.HTTPSConnection(
            host, port, context=ctx, timeout=_remaining(deadline, peer, url, timeout)
        )
        try:
            try:
                conn.connect()
                sock = conn.sock
                assert isinstance(sock, ssl.SSLSocket)
                if endpoint.profile == "https_spiffe" and not insecure:
                    _check_svid(sock.getpeercert(binary_form=True), endpoint, peer)
                sock.settimeout(_remaining(deadline, peer, url, timeout))
                conn.request("GET", path, headers={"Accept": "application/json"})
                resp = conn.getresponse()
                if resp.status in (301, 302, 303, 307, 308):
                    location = resp.getheader("Location")
                    if not location:
                        raise BundleError(peer, f"{url} redirected without a Location")
                    url = urljoin(url, location)
                    continue
                if resp.status != 200:
                    raise BundleError(
                        peer,
                        f"{url} answered HTTP {resp.status} {resp.reason}",
                        "check the bundle endpoint URL (its path) in the spec",
                    )
                length = resp.getheader("Content-Length")
                if length is not None and length.isdigit() and int(length) > MAX_DOCUMENT_BYTES:
                    raise BundleError(
                        peer,
                        f"{url} announces a {length}-byte bundle, over the "
                        f"{MAX_DOCUMENT_BYTES} allowed",
                        "check the bundle endpoint URL; the kept bundle stays in force",
                    )
                body = bytearray()
                while True:
                    left = _remaining(deadline, peer, url, timeout)
                    if sock.fileno() >= 0:  # http.client closes it once the body is read
                        sock.settimeout(left)
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise BundleError(
                            peer,
                            f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes: not a bundle",
                            "check the bundle endpoint URL; the kept bundle stays in force",
                        )
                return bytes(body), url
            except ssl.SSLCertVerificationError as exc:
                raise BundleError(
                    peer,
                    _tls_problem(exc, endpoint, url),
                    "check the endpoint URL and profile in the spec; the kept bundle stays "
                    "in force",
                ) from None
            except TimeoutError:
                _remaining(deadline, peer, url, timeout)
                raise BundleError(
                    peer,
                    f"{url} did not answer in time",
                    "check that the bundle endpoint is up; the kept bundle stays in force",
                ) from None
            except ssl.SSLError as exc:
                raise BundleError(
                    peer,
                    f"TLS with {url} failed ({exc.reason or exc})",
                    "check that the endpoint serves HTTPS with the profile the spec names",
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                raise BundleError(
                    peer,
                    f"bundle endpoint {url} is unreachable ({reason})",
                    "check that it is up and reachable from here; the kept bundle stays in force",
                ) from None
        finally:
            conn.close()
    raise BundleError(peer, f"{endpoint.url} redirected more than {MAX_REDIRECTS} times")
