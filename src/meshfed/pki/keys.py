"""Private keys: generation and PEM (PKCS#8) encoding."""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshfed.pki.errors import PKIError

KeyAlgorithm = Literal["ECDSA_P256", "RSA_2048", "RSA_4096"]
KEY_ALGORITHMS: tuple[KeyAlgorithm, ...] = get_args(KeyAlgorithm)

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def generate_key(alg: KeyAlgorithm) -> PrivateKey:
    """Generate a fresh private key of the given algorithm."""
    if alg == "ECDSA_P256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RSA_2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "RSA_4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    raise ValueError(f"unknown key algorithm {alg!r}; expected one of {', '.join(KEY_ALGORITHMS)}")


def key_algorithm(key: PrivateKey | PublicKey) -> KeyAlgorithm | None:
    """The KeyAlgorithm of a key, or None if it is none of the supported ones."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ECDSA_P256" if isinstance(key.curve, ec.SECP256R1) else None
    if key.key_size == 2048:
        return "RSA_2048"
    if key.key_size == 4096:
        return "RSA_4096"
    return None


def key_to_pem(key: PrivateKey) -> bytes:
    """PKCS#8, unencrypted PEM."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def load_key_pem(data: bytes, source: str) -> PrivateKey:
    """Load an unencrypted PEM private key (EC or RSA); PKIError naming `source` otherwise."""
    fix = "restore the file, or remove the PKI state directory to start over"
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # Never include the data itself: it may be key material.
        reason = type(exc).__name__
        raise PKIError(
            source, f"not a readable unencrypted PEM private key ({reason})", fix
        ) from None
    except Exception:  # cryptography may raise UnsupportedAlgorithm and friends
        raise PKIError(source, "not a readable unencrypted PEM private key", fix) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PKIError(source, f"unsupported private key type {type(key).__name__}", fix)
    return key
