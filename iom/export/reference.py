"""Reference keying and packing of an IoM code, for porting to a device (standalone file).

The exported model gives the un-keyed code: ``m`` symbols in ``[0, q)``. What the template
service stores for it under a 32-byte template key is ``template_bytes(codes, [key], m, q)``:

1. Key stream: ``seed = HKDF-Expand-SHA256(prk=key, info=b"iomface/v1/code-relabelling/m={m}/q={q}",
   32 bytes)``, read as eight big-endian 32-bit words; NumPy's ``SeedSequence(words)`` (pool of
   four 32-bit words) gives four 64-bit words ``s0..s3``; ``PCG64`` (128-bit LCG, XSL-RR output)
   is seeded with state ``s0·2^64 + s1`` and increment ``s2·2^64 + s3``. Each draw is one raw
   64-bit output ``r``; its sort value is ``r >> 11`` (the 53-bit uniform ``(r >> 11) / 2^53``).
2. Group order: ``m`` draws, then ``order`` = the indices sorted by value (stable: ties by index).
   Tables: ``m`` rows of ``q`` draws each, each row sorted the same way: ``table[j]``.
3. Keyed code: ``out[j] = table[j][code[order[j]]]``. Several keys apply one after the other
   (the service's identification record: the gallery key, then that template's key).
4. Packing, bit-sliced: ``b = max(1, ceil(log2 q))`` planes of ``w = ceil(m / 64)`` 64-bit words;
   bit ``k`` of symbol ``i`` is bit ``i % 64`` of word ``i // 64`` of plane ``k``; the bytes are
   the words plane after plane, each little-endian (``8·b·w`` bytes, padding bits zero).

Only ``hashlib``, ``hmac`` and plain integers are needed (NumPy only to accept arrays).
Checked against the project's own implementation by ``tests/test_export.py``.
"""

import hashlib
import hmac

import numpy as np

M32, M64, M128 = (1 << 32) - 1, (1 << 64) - 1, (1 << 128) - 1
PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645          # PCG's default 128-bit multiplier
INIT_A, MULT_A, INIT_B, MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
MIX_L, MIX_R = 0xCA01F9DD, 0x4973F715                   # NumPy SeedSequence constants


def hkdf_expand(prk: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def seed_sequence_state(words: list, n_words32: int) -> list:
    """NumPy ``SeedSequence(words).generate_state(n_words32, uint32)`` (pool size 4)."""
    hash_const = [INIT_A]

    def hashmix(value):
        value = (value ^ hash_const[0]) & M32
        hash_const[0] = (hash_const[0] * MULT_A) & M32
        value = (value * hash_const[0]) & M32
        return value ^ (value >> 16)

    def mix(x, y):
        result = (MIX_L * x - MIX_R * y) & M32
        return result ^ (result >> 16)

    pool = [hashmix(words[i] if i < len(words) else 0) for i in range(4)]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(4, len(words)):
        for dst in range(4):
            pool[dst] = mix(pool[dst], hashmix(words[src]))
    state, const = [], INIT_B
    for i in range(n_words32):
        value = pool[i % 4] ^ const
        const = (const * MULT_B) & M32
        value = (value * const) & M32
        state.append(value ^ (value >> 16))
    return state


class KeyStream:
    """The raw 64-bit draws of one key for one purpose (PCG64 seeded by SeedSequence)."""

    def __init__(self, key: bytes, purpose: str):
        if len(key) != 32:
            raise ValueError("a template key is 32 bytes")
        seed = hkdf_expand(bytes(key), b"iomface/v1/" + purpose.encode("utf-8"), 32)
        words = [int.from_bytes(seed[i:i + 4], "big") for i in range(0, 32, 4)]
        s = seed_sequence_state(words, 8)
        s0, s1, s2, s3 = (s[2 * i] | (s[2 * i + 1] << 32) for i in range(4))  # uint32 pairs, LE
        self.inc = ((((s2 << 64) | s3) << 1) | 1) & M128
        self.state = 0
        self._step()
        self.state = (self.state + ((s0 << 64) | s1)) & M128
        self._step()

    def _step(self):
        self.state = (self.state * PCG_MULT + self.inc) & M128

    def next64(self) -> int:
        self._step()
        rot = self.state >> 122
        value = ((self.state >> 64) ^ self.state) & M64
        return ((value >> rot) | (value << (64 - rot))) & M64

    def permutation(self, n: int) -> list:
        """``n`` draws → the indices in order of their 53-bit values (stable)."""
        values = [self.next64() >> 11 for _ in range(n)]
        return sorted(range(n), key=lambda i: (values[i], i))


def relabel(codes, key: bytes, m: int, q: int) -> np.ndarray:
    """The keyed codes (n, m) of un-keyed ``codes`` (n, m) under ``key``."""
    codes = np.asarray(codes).reshape(-1, m)
    if codes.size and (codes.min() < 0 or codes.max() >= q):
        raise ValueError(f"code symbols must lie in [0, {q})")
    stream = KeyStream(key, f"code-relabelling/m={m}/q={q}")
    order = stream.permutation(m)
    tables = [stream.permutation(q) for _ in range(m)]
    return np.array([[tables[j][int(row[order[j]])] for j in range(m)] for row in codes], np.int64)


def pack(code, q: int) -> bytes:
    """One code (m symbols) packed bit-sliced as the service stores it."""
    code = [int(c) for c in np.asarray(code).reshape(-1)]
    bits, words = max(1, (q - 1).bit_length()), -(-len(code) // 64)
    out = b""
    for plane in range(bits):
        acc = [0] * words
        for i, symbol in enumerate(code):
            acc[i // 64] |= ((symbol >> plane) & 1) << (i % 64)
        out += b"".join(word.to_bytes(8, "little") for word in acc)
    return out


def template_bytes(code, keys: list, m: int, q: int) -> bytes:
    """The stored template of one un-keyed code: relabelled by each key in turn, then packed."""
    keyed = np.asarray(code).reshape(1, m)
    for key in keys:
        keyed = relabel(keyed, key, m, q)
    return pack(keyed[0], q)
