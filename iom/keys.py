"""Template keys: HKDF-SHA256 derivation and the key-derived randomness of a template.

A :class:`TemplateKey` is 32 secret bytes. Everything random about a protected template
(a permutation, a symbol relabelling, a random projection) is drawn from a
:class:`KeyStream` expanded from the key for one named purpose, so the same key always
gives the same template transform on any machine and NumPy version: the stream uses only
HKDF, NumPy's ``SeedSequence`` and the raw output of ``PCG64`` (both stable by NumPy's
policy), never ``Generator`` methods whose algorithms may change between releases.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import numpy as np

KEY_BYTES = 32
_HASH = hashlib.sha256
_INFO_PREFIX = b"iomface/v1/"


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 HKDF-Extract with SHA-256 (an empty salt means 32 zero bytes)."""
    return hmac.new(salt or b"\x00" * _HASH().digest_size, ikm, _HASH).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256."""
    size = _HASH().digest_size
    if not 0 < length <= 255 * size:
        raise ValueError(f"HKDF-Expand length must be in 1..{255 * size}, got {length}")
    out, block = b"", b""
    for counter in range(1, -(-length // size) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), _HASH).digest()
        out += block
    return out[:length]


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """RFC 5869 HKDF-SHA256: extract then expand."""
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


def _as_bytes(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, got {type(value).__name__}")


class TemplateKey:
    """32 secret bytes from which every key-dependent transform of one template is drawn."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes):
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise ValueError(f"a template key is {KEY_BYTES} bytes")
        self._key = bytes(key)

    @classmethod
    def derive(cls, user_token: bytes | str, app_secret: bytes | str, salt: bytes) -> "TemplateKey":
        """HKDF-SHA256 over the user token and the application secret, with a per-template salt.

        The input keying material is ``len(secret) || secret || token`` (length-prefixed,
        so no two (secret, token) pairs share an encoding).
        """
        token = _as_bytes(user_token, "user_token")
        secret = _as_bytes(app_secret, "app_secret")
        if not token:
            raise ValueError("user_token is empty")
        if not secret:
            raise ValueError("app_secret is empty")
        ikm = struct.pack(">I", len(secret)) + secret + token
        return cls(hkdf(ikm, _as_bytes(salt, "salt"), _INFO_PREFIX + b"template-key"))

    @classmethod
    def from_seed(cls, seed: int | str) -> "TemplateKey":
        """A public, reproducible key (model training keys, experiments); not a secret."""
        return cls(hkdf(str(seed).encode("utf-8"), b"", _INFO_PREFIX + b"public-seed"))

    @classmethod
    def random(cls, rng: np.random.Generator | None = None) -> "TemplateKey":
        """A fresh key: from the OS (default) or, for reproducible experiments, from ``rng``."""
        return cls(os.urandom(KEY_BYTES) if rng is None else rng.bytes(KEY_BYTES))

    def stream(self, purpose: str) -> "KeyStream":
        """The random stream of this key for one named purpose (independent per purpose)."""
        return KeyStream(hkdf_expand(self._key, _INFO_PREFIX + purpose.encode("utf-8"), KEY_BYTES))

    def fingerprint(self) -> str:
        """A short public identifier of the key (HKDF output, reveals nothing of the key)."""
        return hkdf_expand(self._key, _INFO_PREFIX + b"fingerprint", 8).hex()

    def __eq__(self, other) -> bool:
        return isinstance(other, TemplateKey) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"TemplateKey({self.fingerprint()}…)"


class KeyStream:
    """Deterministic random numbers from 32 seed bytes (stable across NumPy versions)."""

    def __init__(self, seed: bytes):
        words = np.frombuffer(seed, dtype=">u4").astype(np.uint64)
        self._bits = np.random.PCG64(np.random.SeedSequence([int(w) for w in words]))

    def uniform(self, shape) -> np.ndarray:
        """float64 in [0, 1) with 53 random bits each."""
        n = int(np.prod(shape))
        raw = self._bits.random_raw(n) if n else np.zeros(0, np.uint64)
        return ((np.asarray(raw, np.uint64) >> np.uint64(11)) * (1.0 / 9007199254740992.0)).reshape(shape)

    def normal(self, shape) -> np.ndarray:
        """Standard normal float64 (Box–Muller on :meth:`uniform`)."""
        n = int(np.prod(shape))
        u = self.uniform((2, (n + 1) // 2))
        radius = np.sqrt(-2.0 * np.log1p(-u[0]))  # 1 - u in (0, 1]: log is finite
        angle = 2.0 * np.pi * u[1]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n].reshape(shape)

    def permutations(self, count: int, n: int) -> np.ndarray:
        """``count`` independent uniform permutations of ``range(n)``, shape (count, n)."""
        return np.argsort(self.uniform((count, n)), axis=1, kind="stable")

    def permutation(self, n: int) -> np.ndarray:
        """One uniform permutation of ``range(n)``."""
        return self.permutations(1, n)[0]
