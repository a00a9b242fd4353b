"""The keys of the template service, all derived from the application secret.

=========================  ==========================================================
key                        derivation (HKDF-SHA256 unless said)
=========================  ==========================================================
verification template      ``scrypt(token, salt, n)`` stretched, then HKDF over
                           ``len(secret) || secret || stretched``, the template's salt,
                           and ``info`` binding subject, purpose, key version, model
identification template    HKDF over the secret, a fresh salt per template, the same
                           binding ``info`` — one key per template, renewed on reissue
gallery key                HKDF over the secret alone: the common code space in which
                           the in-memory gallery and the probes are compared; never
                           stored, not recoverable from the database
row key                    HKDF over the secret: the HMAC key that authenticates every
                           row and the event log
admin verifier             HMAC of an administrator credential under the secret
device key                 HKDF over the secret and a device's name: the key a device
                           running the exported model relabels its codes with before
                           sending them (provisioned to it once, kept on the device)
=========================  ==========================================================

Binding the subject, purpose, key version and model into ``info`` makes a salt or code
copied from one row to another useless: the key it was made with cannot be re-derived
for the other row. The key version of a template states its KDF: ``200 + log2(n)`` is
scrypt of cost ``n`` (``r=8, p=1``) then the bound HKDF; version 1 (plain HKDF of an
unstretched token, unbound) is no longer accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct

from iom.keys import TemplateKey, hkdf

_INFO = b"iomface/v2/"
SCRYPT_R, SCRYPT_P = 8, 1


def key_version_for(scrypt_n: int) -> int:
    """The key version recording a scrypt cost ``n`` (a power of two)."""
    return 200 + int(round(math.log2(scrypt_n)))


def scrypt_cost(key_version: int) -> int:
    """The scrypt ``n`` of a key version; ``ValueError`` for versions this code cannot derive."""
    if not 210 <= key_version <= 220:
        raise ValueError(f"key version {key_version} is not a scrypt version this code can derive "
                         "(version 1 templates predate token stretching: reissue them)")
    return 2 ** (key_version - 200)


def _field(value: bytes | str | int) -> bytes:
    data = str(value).encode("utf-8") if isinstance(value, (str, int)) else bytes(value)
    return struct.pack(">I", len(data)) + data


def binding_context(subject_id: str, purpose: str, key_version: int, model_id: str) -> bytes:
    """The HKDF ``info`` suffix that binds a template key to its row."""
    return b"".join(_field(v) for v in (subject_id, purpose, key_version, model_id))


def _ikm(secret: bytes, material: bytes = b"") -> bytes:
    return struct.pack(">I", len(secret)) + secret + material


def stretch_token(token: bytes, salt: bytes, scrypt_n: int) -> bytes:
    """scrypt(token, salt, n, r=8, p=1): the memory-hard step a token guess must pay."""
    return hashlib.scrypt(token, salt=salt, n=scrypt_n, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=256 * SCRYPT_R * scrypt_n, dklen=32)


def verification_key(token: bytes, secret: bytes, salt: bytes, context: bytes,
                     scrypt_n: int) -> TemplateKey:
    """The key of a verification template (needs the user's token and the secret)."""
    stretched = stretch_token(token, salt, scrypt_n)
    return TemplateKey(hkdf(_ikm(secret, stretched), salt, _INFO + b"verify-key\x00" + context))


def identification_key(secret: bytes, salt: bytes, context: bytes) -> TemplateKey:
    """The per-template key of an identification template (needs the secret)."""
    return TemplateKey(hkdf(_ikm(secret), salt, _INFO + b"identify-key\x00" + context))


def gallery_key(secret: bytes) -> TemplateKey:
    """The code space identification compares in (one per secret, never stored)."""
    return TemplateKey(hkdf(_ikm(secret), b"", _INFO + b"identify-gallery"))


def row_key(secret: bytes) -> bytes:
    """The HMAC key authenticating the store's rows and event log."""
    return hkdf(_ikm(secret), b"", _INFO + b"row-mac")


def device_key_material(secret: bytes, device: str) -> bytes:
    """The 32 bytes of ``device``'s code key: what the device is provisioned with (the exported
    model's ``reference.relabel(code, key, m, q)`` applies it) and what the service inverts."""
    return hkdf(_ikm(secret), b"", _INFO + b"device-code\x00" + _field(device))


def device_key(secret: bytes, device: str) -> TemplateKey:
    """:func:`device_key_material` as a :class:`~iom.keys.TemplateKey`."""
    return TemplateKey(device_key_material(secret, device))


def admin_verifier(secret: bytes, credential: bytes) -> bytes:
    """What the service keeps of the administrator credential (an HMAC, not the credential)."""
    return hmac.new(hkdf(_ikm(secret), b"", _INFO + b"admin"), credential, hashlib.sha256).digest()
