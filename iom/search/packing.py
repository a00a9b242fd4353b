"""Compact, bit-sliced packing of IoM hash codes and their mismatch count.

An IoM code is ``m`` symbols in ``[0, q)``; two codes are compared by the number of
groups whose symbols differ (normalised Hamming similarity ``1 - differ/m``). Packed
*bit-sliced*, a code is ``b = bits_per_symbol(q)`` bit planes: plane ``j`` holds bit ``j``
of every symbol, its ``m`` bits packed into ``w = ceil(m / 64)`` ``uint64`` words (symbol
``i`` is bit ``i % 64`` of word ``i // 64``, least significant bit first; the padding bits
past ``m`` are zero). A packed code is therefore a ``(b, w)`` ``uint64`` array and a batch
of ``n`` codes is ``(n, b, w)``.

Two symbols differ exactly when at least one of their bits differs, so the number of
differing groups of two packed codes is ``popcount(OR over planes of (a XOR b))`` summed
over the words; padding bits are zero in both codes and never count.

Sizes, ``packed_nbytes(m, q)`` (8 bytes a word):

========  ==================  ==========
m, q      planes x words      bytes
========  ==================  ==========
512, 2    1 x 8               64
512, 8    3 x 8               192
512, 16   4 x 8               256  (two symbols a byte)
512, 256  8 x 8               512
========  ==================  ==========

against ``m`` bytes (512) for one ``uint8`` a symbol.

For a database a packed code is stored as :func:`to_bytes` (the ``b * w`` words, plane
after plane, each word little-endian) and read back with :func:`from_bytes`.
"""

from __future__ import annotations

import math

import numpy as np

#: largest alphabet size supported (symbols fit in one byte, at most 8 planes)
MAX_Q = 256

_PACK_ROWS = 65536          # rows packed/unpacked at a time (bounds the temporaries)


def _check_q(q) -> int:
    if isinstance(q, (bool, np.bool_)) or not isinstance(q, (int, np.integer)):
        raise ValueError(f"q must be an integer in [2, {MAX_Q}], got {q!r}")
    q = int(q)
    if not 2 <= q <= MAX_Q:
        raise ValueError(f"q must be an integer in [2, {MAX_Q}], got {q}")
    return q


def _check_m(m) -> int:
    if isinstance(m, (bool, np.bool_)) or not isinstance(m, (int, np.integer)) or int(m) < 1:
        raise ValueError(f"m (symbols a code) must be a positive integer, got {m!r}")
    return int(m)


def bits_per_symbol(q: int) -> int:
    """Bit planes a code over ``q`` symbols needs: ``max(1, ceil(log2 q))``."""
    q = _check_q(q)
    return max(1, math.ceil(math.log2(q)))


def words_per_plane(m: int) -> int:
    """``uint64`` words holding one plane of ``m`` symbols: ``ceil(m / 64)``."""
    return -(-_check_m(m) // 64)


def packed_shape(m: int, q: int) -> tuple[int, int]:
    """Shape ``(planes, words)`` of one packed code."""
    return bits_per_symbol(q), words_per_plane(m)


def packed_nbytes(m: int, q: int) -> int:
    """Bytes of one packed code: ``8 * bits_per_symbol(q) * ceil(m / 64)``."""
    bits, words = packed_shape(m, q)
    return 8 * bits * words


def pack_codes(codes: np.ndarray, q: int) -> np.ndarray:
    """Bit-sliced packing of ``(n, m)`` codes over ``[0, q)`` → ``(n, bits, words)`` ``uint64``.

    Raises :class:`ValueError` if ``codes`` is not a 2-D integer array, if a symbol lies
    outside ``[0, q)`` or if ``q`` is not an integer in ``[2, 256]``.
    """
    q = _check_q(q)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D (n, m) array, got shape {codes.shape}")
    if not (np.issubdtype(codes.dtype, np.integer) or codes.dtype == np.bool_):
        raise ValueError(f"codes must hold integer symbols, got dtype {codes.dtype}")
    n, m = codes.shape
    _check_m(m)
    if codes.size:
        lo, hi = codes.min(), codes.max()
        if lo < 0 or hi >= q:
            raise ValueError(f"code symbols must lie in [0, {q}), found values in [{lo}, {hi}]")
    bits, words = packed_shape(m, q)
    out = np.zeros((n, bits, words), dtype="<u8")
    out_bytes = out.view(np.uint8).reshape(n, bits, words * 8)
    nbytes = -(-m // 8)
    for start in range(0, n, _PACK_ROWS):
        block = codes[start:start + _PACK_ROWS].astype(np.uint8, copy=False)
        stop = start + len(block)
        for b in range(bits):
            plane = (block >> b) & 1
            out_bytes[start:stop, b, :nbytes] = np.packbits(plane, axis=1, bitorder="little")
    return out.astype(np.uint64, copy=False)


def _as_packed(packed: np.ndarray, m: int, q: int) -> np.ndarray:
    """``packed`` as ``(n, bits, words)`` (accepting ``(n, bits*words)`` rows), shape checked."""
    bits, words = packed_shape(m, q)
    packed = np.asarray(packed)
    if packed.dtype != np.uint64:
        raise ValueError(f"packed codes must be uint64, got dtype {packed.dtype}")
    if packed.ndim == 2 and packed.shape[1] == bits * words:
        packed = packed.reshape(len(packed), bits, words)
    if packed.ndim != 3 or packed.shape[1:] != (bits, words):
        raise ValueError(f"packed codes for m={m}, q={q} must have shape (n, {bits}, {words}) "
                         f"or (n, {bits * words}), got {packed.shape}")
    return packed


def unpack_codes(packed: np.ndarray, m: int, q: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``(n, bits, words)`` ``uint64`` → ``(n, m)`` ``uint8``."""
    m, q = _check_m(m), _check_q(q)
    packed = _as_packed(packed, m, q)
    n, bits, words = packed.shape
    out = np.zeros((n, m), np.uint8)
    for start in range(0, n, _PACK_ROWS):
        block = np.ascontiguousarray(packed[start:start + _PACK_ROWS], dtype="<u8")
        planes = np.unpackbits(block.view(np.uint8).reshape(len(block), bits, words * 8),
                               axis=2, count=m, bitorder="little")
        acc = out[start:start + len(block)]
        for b in range(bits):
            acc |= planes[:, b, :] << b
    return out


def to_bytes(packed_row: np.ndarray) -> bytes:
    """One packed code (``(bits, words)`` or flat) as bytes: words plane by plane, little-endian."""
    row = np.asarray(packed_row)
    if row.dtype != np.uint64 or row.ndim not in (1, 2):
        raise ValueError(f"a packed code is a 1-D or 2-D uint64 array, got {row.dtype} {row.shape}")
    return np.ascontiguousarray(row, dtype="<u8").tobytes()


def from_bytes(blob: bytes, m: int, q: int) -> np.ndarray:
    """A packed code ``(bits, words)`` ``uint64`` from :func:`to_bytes`'s bytes.

    Raises :class:`ValueError` if the length is not ``packed_nbytes(m, q)``, if padding
    bits are set or if a symbol decodes to ``q`` or more (a corrupt or foreign blob).
    """
    m, q = _check_m(m), _check_q(q)
    bits, words = packed_shape(m, q)
    blob = bytes(blob)
    if len(blob) != 8 * bits * words:
        raise ValueError(f"a packed code for m={m}, q={q} is {8 * bits * words} bytes, got {len(blob)}")
    row = np.frombuffer(blob, dtype="<u8").reshape(bits, words).astype(np.uint64)
    if m % 64 and np.any(row[:, -1] >> np.uint64(m % 64)):
        raise ValueError("packed code has bits set past the m-th symbol (padding must be zero)")
    if q < (1 << bits) and unpack_codes(row[None], m, q).max() >= q:
        raise ValueError(f"packed code decodes to a symbol outside [0, {q})")
    return row


def count_mismatches(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing groups of packed codes ``a`` and ``b`` (``(..., bits, words)``, broadcast).

    ``popcount(OR over planes of (a XOR b))`` summed over words, as ``int64``.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != np.uint64 or b.dtype != np.uint64 or a.ndim < 2 or b.ndim < 2:
        raise ValueError("packed codes must be uint64 arrays of shape (..., bits, words)")
    diff = np.bitwise_or.reduce(np.bitwise_xor(a, b), axis=-2)
    return np.bitwise_count(diff).sum(axis=-1, dtype=np.int64)
