"""InsightFace verification ``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``...).

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds two encoded
images per pair (``bins[2*i]``, ``bins[2*i+1]``) and ``issame_list`` one bool per
pair. The published files were written under Python 2, so they are loaded with
``encoding='bytes'``.

Unpickling is restricted: only the few numpy / builtin callables such files need
are allowed, anything else raises :class:`~arcface.errors.DataFormatError`
before it can be called, so a hostile ``.bin`` cannot run code. It cannot make a
small file allocate a lot of memory either:

* the opcodes are scanned first (:mod:`pickletools`), so a length or memo index
  that claims gigabytes is refused before the unpickler allocates it;
* the allowed callables are wrapped: ``bytes`` / ``bytearray`` only copy bytes or a
  latin-1 ``str`` (never ``bytearray(2**31)``), ``numpy.ndarray`` cannot be called,
  arrays and dtypes are rebuilt from a checked state (numpy's own ``__setstate__``
  reads out of bounds or crashes on inconsistent ones) whose data must match the
  shape exactly;
* everything they create is charged to a budget of :data:`_ALLOC_FACTOR` times the
  file size (plus :data:`_ALLOC_SLACK`), as are the opcodes themselves, so memo
  references cannot copy one large object many times over.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import pickle
import pickletools
import reprlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from arcface.data.pairs import DEFAULT_N_FOLDS, PairSet, atomic_write, chunk_folds
from arcface.errors import DataFormatError

__all__ = ["read_verification_bin", "write_verification_bin"]

_ALLOC_FACTOR = 4
"""Bytes the allowed callables may create per byte of the file (legitimate files need 2)."""
_ALLOC_SLACK = 1 << 20
"""Bytes allowed on top of that, for small files."""
_OPCODE_BYTES = 256
"""Memory charged per pickle opcode: the largest fresh object one opcode makes (an empty set)."""

_DTYPE_KINDS = "biufcSUO"  # bool, ints, floats, complex, bytes, str, object: no structured/void
_MAX_NDIM = 32


def _numpy_attr(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` (numpy 2) or ``numpy.core.<submodule>.<name>`` (numpy 1)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")


def _text(value: Any) -> Any:
    """Python 2 ``str`` arrives as ``bytes`` under ``encoding='bytes'``: decode it, leave the rest."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _is_latin1(encoding: Any) -> bool:
    return isinstance(encoding, str) and encoding.lower().replace("_", "-") in ("latin1", "latin-1", "iso-8859-1")


class _DtypeSpec:
    """What a pickled ``numpy.dtype(code, align, copy)`` plus its BUILD state asked for.

    numpy's ``dtype.__setstate__`` trusts its input (a field offset past the item
    size reads out of bounds, a sub-array bigger than the item crashes), so the
    state is only recorded here and :meth:`_Guard.dtype_of` builds a plain dtype.
    """

    __slots__ = ("code", "state")

    def __init__(self, code: Any):
        self.code = code
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled dtype {reprlib.repr(self.code)}>"


class _PickledArray(np.ndarray):
    """Array made by the guarded ``_reconstruct``: its BUILD state is checked before numpy sees it."""

    def __setstate__(self, state: Any) -> None:
        guard = self.__dict__.get("_guard")
        if guard is None:
            raise DataFormatError("verification .bin: array state set outside of the guarded loader")
        super().__setstate__(guard.array_state(state))


class _Guard:
    """The allowed callables of one load, with the memory budget they share."""

    def __init__(self, where: str, file_size: int):
        self.where = where
        self.file_size = file_size
        self.budget = _ALLOC_FACTOR * file_size + _ALLOC_SLACK
        self.left = self.budget
        self.ndarray_name = self.ndarray  # one bound method, so _reconstruct can test identity

    def refuse(self, what: str) -> DataFormatError:
        return DataFormatError(f"{self.where}: refusing {what} in a verification .bin")

    def charge(self, nbytes: int, what: str) -> None:
        """Take ``nbytes`` from the budget before they are allocated, or refuse."""
        if nbytes > self.left:
            raise DataFormatError(
                f"{self.where}: {what} would allocate {nbytes} bytes, over the memory budget of a "
                f"{self.file_size}-byte verification .bin ({self.budget} bytes, {self.left} left)"
            )
        self.left -= nbytes

    def globals(self) -> dict[tuple[str, str], Any]:
        allowed: dict[tuple[str, str], Any] = {
            ("numpy", "ndarray"): self.ndarray_name,
            ("numpy", "dtype"): self.dtype,
            ("_codecs", "encode"): self.encode,
        }
        for package in ("numpy.core", "numpy._core"):
            allowed[(f"{package}.multiarray", "_reconstruct")] = self.reconstruct
            allowed[(f"{package}.multiarray", "scalar")] = self.scalar
            allowed[(f"{package}.numeric", "_frombuffer")] = self.frombuffer
        for module in ("builtins", "__builtin__"):
            allowed[(module, "bytes")] = self.bytes
            allowed[(module, "bytearray")] = self.bytearray
        return allowed

    # -- builtins ------------------------------------------------------------------------
    def _bytes_size(self, name: str, args: tuple) -> int:
        """Size of ``bytes(*args)`` / ``bytearray(*args)`` when the arguments are data, not a size."""
        if not args:
            return 0
        if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
            return len(args[0])
        if isinstance(args[0], str) and len(args) in (2, 3) and _is_latin1(args[1]) and all(
                isinstance(a, str) for a in args[2:]):
            return len(args[0])
        kinds = ", ".join(type(a).__name__ for a in args)
        raise self.refuse(f"builtins.{name}({kinds}) (only bytes or a latin-1 str may be copied)")

    def bytes(self, *args: Any) -> bytes:
        self.charge(self._bytes_size("bytes", args), "bytes()")
        return bytes(*args)

    def bytearray(self, *args: Any) -> bytearray:
        self.charge(self._bytes_size("bytearray", args), "bytearray()")
        return bytearray(*args)

    def encode(self, obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        """Stand-in for ``_codecs.encode`` used by protocol-2 pickles of ``bytes``: latin-1 text only."""
        if not isinstance(obj, str) or not _is_latin1(encoding) or not isinstance(errors, str):
            raise self.refuse(f"_codecs.encode of a {type(obj).__name__} with encoding {reprlib.repr(encoding)}")
        self.charge(len(obj), "_codecs.encode")
        return obj.encode("latin-1", errors)

    # -- numpy ---------------------------------------------------------------------------
    def ndarray(self, *args: Any, **kwargs: Any) -> NoReturn:
        """``numpy.ndarray`` may only be named (as the type ``_reconstruct`` builds), not called."""
        raise self.refuse("a call of numpy.ndarray (it allocates whatever shape it is given)")

    def dtype(self, code: Any, align: Any = False, copy: Any = False) -> _DtypeSpec:
        if not isinstance(_text(code), str):
            raise self.refuse(f"numpy.dtype({type(code).__name__})")
        return _DtypeSpec(_text(code))

    def dtype_of(self, spec: Any) -> np.dtype:
        """A plain numeric/bytes/str/object dtype from a :class:`_DtypeSpec`, checked."""
        if not isinstance(spec, _DtypeSpec):
            raise self.refuse(f"a {type(spec).__name__} where a numpy dtype belongs")
        try:
            dt = np.dtype(spec.code)
        except (TypeError, ValueError) as e:
            raise self.refuse(f"numpy dtype {reprlib.repr(spec.code)} ({e})") from None
        if dt.kind not in _DTYPE_KINDS or dt.names is not None or dt.subdtype is not None:
            raise self.refuse(f"numpy dtype {dt} (only plain numeric, bytes, str and object dtypes)")
        state = spec.state
        if state is None:
            return dt
        ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
              and _text(state[1]) in ("<", ">", "|", "=") and state[2] is None and state[3] is None
              and state[4] is None and state[5] in (-1, dt.itemsize) and (len(state) == 8 or state[8] is None))
        if not ok:
            raise self.refuse(f"numpy dtype {dt} with state {reprlib.repr(state)} (fields, sub-arrays, sizes)")
        order = _text(state[1])
        return dt.newbyteorder(order) if order in "<>" and dt.itemsize > 1 else dt

    def _shape(self, shape: Any) -> tuple[tuple[int, ...], int]:
        """A shape of at most 32 non-negative ints, and its element count (at most the file size:
        every element needs a byte of data or an item of a list; zero-size items are no way round)."""
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        if (not isinstance(shape, tuple) or len(shape) > _MAX_NDIM
                or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise self.refuse(f"array shape {reprlib.repr(shape)}")
        shape = tuple(int(d) for d in shape)
        count = math.prod(shape)
        if count > self.file_size:
            raise self.refuse(f"an array of shape {shape} ({count} elements) from a {self.file_size}-byte file")
        return shape, count

    def reconstruct(self, subtype: Any, shape: Any, typecode: Any) -> _PickledArray:
        """``_reconstruct(ndarray, (0,), b'b')``: an empty array whose BUILD state brings the data."""
        if subtype is not self.ndarray_name:
            raise self.refuse(f"_reconstruct of a {type(subtype).__name__}")
        if self._shape(shape)[1] != 0:
            raise self.refuse("_reconstruct with a non-empty shape (numpy pickles (0,))")
        return self._guarded(np.ndarray.__new__(_PickledArray, (0,), np.int8))

    def _guarded(self, arr: np.ndarray) -> _PickledArray:
        """``arr`` as a :class:`_PickledArray`, so a later BUILD on it is checked too."""
        arr = arr.view(_PickledArray)
        arr._guard = self
        return arr

    def array_state(self, state: Any) -> tuple:
        """Check an ndarray BUILD state; returns the one numpy gets (with a checked dtype)."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise self.refuse(f"ndarray state {reprlib.repr(state)}")
        shape, spec, fortran, raw = state[-4:]
        shape, count = self._shape(shape)
        dt = self.dtype_of(spec)
        nbytes = count * dt.itemsize
        if dt.hasobject:  # numpy reads past the end of a short list (and crashes)
            if not isinstance(raw, list) or len(raw) != count:
                raise self.refuse(f"an object array of shape {shape} with {type(raw).__name__} data "
                                  f"(a list of exactly {count} items is needed)")
        else:
            if not isinstance(raw, bytes) or len(raw) != nbytes:
                size = len(raw) if isinstance(raw, (bytes, bytearray, list)) else type(raw).__name__
                raise self.refuse(f"an array of shape {shape} and dtype {dt} ({nbytes} bytes) "
                                  f"with data of {size} bytes")
        self.charge(nbytes, f"an array of shape {shape}")
        return (1, shape, dt, bool(fortran), raw)

    def frombuffer(self, buf: Any, spec: Any, shape: Any, order: Any) -> _PickledArray:
        """Protocol-5 ``_frombuffer``: a view of ``buf``, whose size must match the shape."""
        dt = self.dtype_of(spec)
        shape, count = self._shape(shape)
        order = _text(order)
        if dt.hasobject or order not in ("C", "F") or not isinstance(buf, (bytes, bytearray)):
            raise self.refuse(f"_frombuffer of a {type(buf).__name__} as {dt}, order {reprlib.repr(order)}")
        if len(buf) != count * dt.itemsize:
            raise self.refuse(f"_frombuffer of {len(buf)} bytes as shape {shape} and dtype {dt}")
        self.charge(len(buf), "_frombuffer")
        return self._guarded(np.frombuffer(buf, dtype=dt).reshape(shape, order=order))

    def scalar(self, spec: Any, obj: Any = None) -> Any:
        """``multiarray.scalar(dtype, data)``: a numpy scalar from exactly one item of data."""
        dt = self.dtype_of(spec)
        if dt.hasobject:
            return obj
        if not isinstance(obj, bytes) or len(obj) != dt.itemsize:
            raise self.refuse(f"a numpy {dt} scalar from {reprlib.repr(obj)}")
        self.charge(dt.itemsize, "a numpy scalar")
        return _numpy_attr("multiarray", "scalar")(dt, obj)


def _scan_opcodes(data: bytes, guard: _Guard) -> None:
    """Walk the opcodes without building anything; refuse lengths past the end and wild memo indices.

    The unpickler allocates a ``BINBYTES``/``BINBYTES8``/``BYTEARRAY8`` object of the
    announced length before reading it, and grows its memo to any ``LONG_BINPUT`` index:
    a ten-byte file could make it allocate gigabytes.
    """
    ops = 0
    max_ops = guard.left // _OPCODE_BYTES
    try:
        for opcode, arg, pos in pickletools.genops(data):  # raises when an argument runs past the end
            ops += 1
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and arg >= ops:
                raise guard.refuse(f"memo index {arg} at byte {pos} (only {ops} opcodes so far)")
            if ops > max_ops:
                break  # charged below: refused without walking the rest
    except DataFormatError:
        raise
    except ValueError as e:
        raise DataFormatError(f"{guard.where}: not a valid verification .bin (ValueError: {e})") from None
    guard.charge(ops * _OPCODE_BYTES, f"{ops} pickle opcodes")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a verification ``.bin`` legitimately uses."""

    def __init__(self, file: io.BufferedIOBase, where: str, guard: _Guard):
        super().__init__(file, encoding="bytes")
        self._where = where
        self._globals = guard.globals()

    def find_class(self, module: str, name: str) -> Any:
        obj = self._globals.get((module, name))
        if obj is None:
            raise DataFormatError(
                f"{self._where}: refusing to unpickle global {module}.{name} "
                f"(not allowed in a verification .bin)"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise DataFormatError(f"{self._where}: persistent ids are not allowed in a verification .bin")


def _load(data: bytes, where: str) -> Any:
    """Unpickle ``data`` with the restricted unpickler, inside a memory budget."""
    guard = _Guard(where, len(data))
    _scan_opcodes(data, guard)
    try:
        return _RestrictedUnpickler(io.BytesIO(data), where, guard).load()
    except DataFormatError:
        raise
    except MemoryError:
        raise DataFormatError(f"{where}: out of memory unpickling the verification .bin") from None
    except Exception as e:  # pickle raises many kinds of errors on damaged input
        raise DataFormatError(f"{where}: not a valid verification .bin ({type(e).__name__}: {e})") from None


def _to_bytes(item: Any, where: str, k: int) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype in (np.uint8, np.int8):
        return item.tobytes()
    raise DataFormatError(f"{where}: image {k} is a {type(item).__name__}, expected encoded image bytes")


def read_verification_bin(path: str | os.PathLike, name: str | None = None) -> PairSet:
    """Read an InsightFace verification ``.bin`` into a :class:`PairSet` of encoded bytes.

    ``name`` defaults to the file stem (``lfw.bin`` -> ``"lfw"``). Folds are 10
    consecutive near-equal chunks, as in InsightFace's evaluation.

    Raises:
        DataFormatError: missing/unreadable file, a forbidden pickle global, a
            pickle that would allocate far more memory than its size justifies,
            or content that is not ``(bins, issame_list)``.
    """
    p = Path(os.fspath(path))
    where = str(p)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{where}: verification .bin not found") from None
    except OSError as e:
        raise DataFormatError(f"{where}: cannot read ({e})") from None
    obj = _load(data, where)

    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataFormatError(f"{where}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame_raw = obj
    if not all(isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim == 1) for x in obj):
        raise DataFormatError(f"{where}: bins and issame_list must be sequences")
    n = len(issame_raw)
    if len(bins) != 2 * n:
        raise DataFormatError(f"{where}: {len(bins)} images for {n} pairs (expected {2 * n})")
    images = [_to_bytes(item, where, k) for k, item in enumerate(bins)]

    flags = []
    for k, v in enumerate(issame_raw):
        if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and int(v) in (0, 1)):
            flags.append(bool(v))
        else:
            raise DataFormatError(f"{where}: issame_list[{k}] = {reprlib.repr(v)} is not a bool")
    return PairSet(
        name=name if name is not None else p.stem,
        left=images[0::2],
        right=images[1::2],
        issame=np.asarray(flags, dtype=bool),
        folds=chunk_folds(n, DEFAULT_N_FOLDS),
    )


def _item_bytes(item: Any, k: int) -> bytes:
    if isinstance(item, (str, os.PathLike)):
        try:
            with open(item, "rb") as f:
                return f.read()
        except OSError as e:
            raise DataFormatError(f"{os.fspath(item)}: cannot read image for pair element {k} ({e})") from None
    return _to_bytes(item, "write_verification_bin", k)


def write_verification_bin(
    path: str | os.PathLike,
    left: Sequence[bytes | str | os.PathLike],
    right: Sequence[bytes | str | os.PathLike],
    issame: Sequence[bool] | np.ndarray,
) -> None:
    """Write an InsightFace-compatible ``.bin`` (pickle protocol 4), atomically.

    Elements of ``left`` / ``right`` are encoded image bytes (or uint8 arrays of
    them) or paths of image files, whose bytes are stored unchanged.
    """
    n = len(issame)
    if len(left) != n or len(right) != n:
        raise DataFormatError(f"left/right/issame lengths differ ({len(left)}, {len(right)}, {n})")
    bins: list[bytes] = []
    for k in range(n):
        bins.append(_item_bytes(left[k], 2 * k))
        bins.append(_item_bytes(right[k], 2 * k + 1))
    issame_list = [bool(v) for v in np.asarray(issame).ravel().tolist()]
    atomic_write(path, pickle.dumps((bins, issame_list), protocol=4))
