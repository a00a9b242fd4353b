"""Face-verification pair sets: LFW-style ``pairs.txt`` folders and a common :class:`PairSet`.

``pairs.txt`` format (LFW): an optional header ``n_folds<TAB>n_per_fold``, then
for each fold ``n_per_fold`` *same* lines ``name<TAB>idx1<TAB>idx2`` followed by
``n_per_fold`` *different* lines ``name1<TAB>idx1<TAB>name2<TAB>idx2``. The image
of ``(name, idx)`` is ``{image_root}/{name}/{name}_{idx:04d}.{ext}``. Fields may
also be separated by spaces and blank lines are ignored.

*Path pairs* format, for image folders that do not follow LFW naming (written by
:func:`arcface.data.pair_generation.write_pairs`): the first line starts with
:data:`PATH_PAIRS_MAGIC`; further ``#`` lines may follow it (only at the top of
the file); then the optional header ``n_folds<TAB>n_per_fold`` and one line
``path1<TAB>path2<TAB>issame`` per pair, fields separated by exactly one tab,
paths relative to the image root with ``/`` separators and ``issame`` ``1`` or
``0``. Folds come from the header as for LFW files.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from arcface.errors import DataFormatError

__all__ = [
    "PairSet",
    "LfwPair",
    "PathPair",
    "PATH_PAIRS_MAGIC",
    "read_lfw_pairs",
    "read_path_pairs",
    "is_path_pairs_file",
    "write_lfw_pairs",
    "load_pairs_dir",
    "DEFAULT_N_FOLDS",
    "chunk_folds",
]

DEFAULT_N_FOLDS = 10

#: First characters of a path pairs file (see the module docstring).
PATH_PAIRS_MAGIC = "# iomface path pairs v1"


@dataclass
class PairSet:
    """A verification set: ``left[i]`` and ``right[i]`` are the same person iff ``issame[i]``.

    Elements of ``left`` / ``right`` are image file paths (``str``) or encoded
    image bytes; both are accepted by :func:`arcface.data.images.decode_image`.
    ``folds[i]`` is the cross-validation fold (``0 .. n_folds-1``) of pair ``i``.
    """

    name: str
    left: list
    right: list
    issame: np.ndarray
    folds: np.ndarray

    def __post_init__(self) -> None:
        self.issame = np.asarray(self.issame, dtype=bool)
        self.folds = np.asarray(self.folds, dtype=np.int64)
        n = len(self.issame)
        if not (len(self.left) == len(self.right) == n == len(self.folds)):
            raise DataFormatError(
                f"{self.name}: left/right/issame/folds lengths differ "
                f"({len(self.left)}, {len(self.right)}, {n}, {len(self.folds)})"
            )

    def __len__(self) -> int:
        return len(self.issame)

    @property
    def n_folds(self) -> int:
        """Number of folds (``max(folds) + 1``; 0 for an empty set)."""
        return int(self.folds.max()) + 1 if len(self.folds) else 0


class LfwPair(NamedTuple):
    """One line of ``pairs.txt``; a *same* line has ``name2 == name1``."""

    name1: str
    idx1: int
    name2: str
    idx2: int

    @property
    def issame(self) -> bool:
        return self.name1 == self.name2


class PathPair(NamedTuple):
    """One line of a path pairs file: two image paths relative to the image root."""

    path1: str
    path2: str
    issame: bool


def chunk_folds(n: int, n_folds: int = DEFAULT_N_FOLDS) -> np.ndarray:
    """Fold index of ``n`` items split into ``n_folds`` consecutive near-equal chunks.

    Matches ``sklearn.model_selection.KFold(n_folds, shuffle=False)``: the first
    ``n % n_folds`` folds get one extra item.
    """
    sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds, dtype=np.int64), sizes)


def atomic_write(path: str | os.PathLike, data: bytes, private: bool = False) -> None:
    """Write ``data`` to a temporary file next to ``path`` and move it into place (``private``:
    the file stays 0600, as for keys)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _parse_index(token: str, path: str, lineno: int) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DataFormatError(f"{path}:{lineno}: image index {token!r} is not an integer") from None
    if value < 0:
        raise DataFormatError(f"{path}:{lineno}: negative image index {value}")
    return value


def _parse_pairs_file(pairs_path: str | os.PathLike) -> tuple[list[LfwPair], tuple[int, int] | None]:
    """Parse a pairs file; returns the pairs and the ``(n_folds, n_per_fold)`` header if any."""
    path = os.fspath(pairs_path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: pairs file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: cannot read pairs file ({e})") from None

    pairs: list[LfwPair] = []
    header: tuple[int, int] | None = None
    header_line = 0
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if not pairs and header is None and len(fields) <= 2 and all(s.isdigit() for s in fields):
            values = [int(s) for s in fields]
            header = (values[0], values[1]) if len(values) == 2 else (1, values[0])
            header_line = lineno
            if min(header) <= 0:
                raise DataFormatError(f"{path}:{lineno}: header values must be positive, got {line.strip()!r}")
            continue
        if len(fields) == 3:
            name, i1, i2 = fields
            pairs.append(LfwPair(name, _parse_index(i1, path, lineno), name, _parse_index(i2, path, lineno)))
        elif len(fields) == 4:
            n1, i1, n2, i2 = fields
            pairs.append(LfwPair(n1, _parse_index(i1, path, lineno), n2, _parse_index(i2, path, lineno)))
        else:
            raise DataFormatError(
                f"{path}:{lineno}: expected 'name idx1 idx2' or 'name1 idx1 name2 idx2', "
                f"got {len(fields)} fields: {line.strip()[:80]!r}"
            )
    _check_pair_count(path, pairs, header, header_line)
    return pairs, header


def _check_pair_count(path, pairs: list, header, header_line) -> None:
    """A pairs file must hold pairs, as many as its ``n_folds x n_per_fold`` header says."""
    if not pairs:
        raise DataFormatError(f"{path}: no pairs in file")
    if header is not None and 2 * header[0] * header[1] != len(pairs):
        raise DataFormatError(
            f"{path}:{header_line}: header says {header[0]} folds x {header[1]} x 2 = "
            f"{2 * header[0] * header[1]} pairs but the file has {len(pairs)}"
        )


def read_lfw_pairs(pairs_path: str | os.PathLike) -> list[LfwPair]:
    """Parse an LFW-format pairs file into a list of :class:`LfwPair`.

    Raises:
        DataFormatError: missing file, or a malformed line (message has file:line).
    """
    return _parse_pairs_file(pairs_path)[0]


def write_lfw_pairs(
    path: str | os.PathLike,
    pairs: Sequence[LfwPair | Sequence],
    n_folds: int,
    n_per_fold: int,
) -> None:
    """Write pairs in LFW format: header, then per fold ``n_per_fold`` same then different pairs.

    ``pairs`` holds :class:`LfwPair` or tuples ``(name, idx1, idx2)`` /
    ``(name1, idx1, name2, idx2)``. Raises DataFormatError when the count or the
    same/different order does not match ``n_folds`` x ``n_per_fold``.
    """
    norm: list[LfwPair] = []
    for k, p in enumerate(pairs):
        if len(p) == 3:
            norm.append(LfwPair(str(p[0]), int(p[1]), str(p[0]), int(p[2])))
        elif len(p) == 4:
            norm.append(LfwPair(str(p[0]), int(p[1]), str(p[2]), int(p[3])))
        else:
            raise DataFormatError(f"pair {k}: expected 3 or 4 fields, got {p!r}")
        q = norm[-1]
        if any(not n or any(c.isspace() for c in n) for n in (q.name1, q.name2)) or min(q.idx1, q.idx2) < 0:
            raise DataFormatError(f"pair {k}: names must be non-empty without whitespace, indices >= 0: {p!r}")
    if len(norm) != 2 * n_folds * n_per_fold:
        raise DataFormatError(f"{len(norm)} pairs given, expected 2 x {n_folds} folds x {n_per_fold} per fold")
    lines = [f"{n_folds}\t{n_per_fold}\n"]
    for k, q in enumerate(norm):
        want_same = (k // n_per_fold) % 2 == 0
        if q.issame != want_same:
            raise DataFormatError(
                f"pair {k}: expected a {'same' if want_same else 'different'} pair at this position "
                f"(each fold is {n_per_fold} same then {n_per_fold} different pairs)"
            )
        if q.issame:
            lines.append(f"{q.name1}\t{q.idx1}\t{q.idx2}\n")
        else:
            lines.append(f"{q.name1}\t{q.idx1}\t{q.name2}\t{q.idx2}\n")
    atomic_write(path, "".join(lines).encode("utf-8"))


def is_path_pairs_file(pairs_path: str | os.PathLike) -> bool:
    """Whether the file starts with :data:`PATH_PAIRS_MAGIC` (False when it cannot be read)."""
    try:
        with open(os.fspath(pairs_path), "rb") as f:
            head = f.read(len(PATH_PAIRS_MAGIC.encode("utf-8")) + 3)
    except OSError:
        return False
    return head.removeprefix(b"\xef\xbb\xbf").startswith(PATH_PAIRS_MAGIC.encode("utf-8"))


def _parse_path_pairs_file(pairs_path: str | os.PathLike) -> tuple[list[PathPair], tuple[int, int] | None]:
    """Parse a path pairs file; returns the pairs and the ``(n_folds, n_per_fold)`` header if any."""
    path = os.fspath(pairs_path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [line.rstrip("\r") for line in f.read().split("\n")]
    except FileNotFoundError:
        raise DataFormatError(f"{path}: pairs file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: cannot read pairs file ({e})") from None
    if not lines or not lines[0].startswith(PATH_PAIRS_MAGIC):
        raise DataFormatError(f"{path}:1: a path pairs file must start with {PATH_PAIRS_MAGIC!r}")

    pairs: list[PathPair] = []
    header: tuple[int, int] | None = None
    header_line = 0
    in_preamble = True
    for lineno, line in enumerate(lines, 1):
        if in_preamble and (line.startswith("#") or not line.strip()):
            continue
        in_preamble = False
        if not line.strip():
            continue
        fields = line.split("\t")
        if not pairs and header is None and len(fields) == 2 and all(s.isascii() and s.isdigit() for s in fields):
            header = (int(fields[0]), int(fields[1]))
            header_line = lineno
            if min(header) <= 0:
                raise DataFormatError(f"{path}:{lineno}: header values must be positive, got {line!r}")
            continue
        if len(fields) != 3:
            raise DataFormatError(
                f"{path}:{lineno}: expected 'path1<TAB>path2<TAB>issame', "
                f"got {len(fields)} tab-separated fields: {line[:80]!r}"
            )
        p1, p2, flag = fields
        if not p1 or not p2:
            raise DataFormatError(f"{path}:{lineno}: empty image path")
        if flag not in ("0", "1"):
            raise DataFormatError(f"{path}:{lineno}: issame must be 1 or 0, got {flag!r}")
        pairs.append(PathPair(p1, p2, flag == "1"))
    _check_pair_count(path, pairs, header, header_line)
    return pairs, header


def read_path_pairs(pairs_path: str | os.PathLike) -> list[PathPair]:
    """Parse a path pairs file into a list of :class:`PathPair` (paths as written, relative).

    Raises:
        DataFormatError: missing file, no magic first line, or a malformed line.
    """
    return _parse_path_pairs_file(pairs_path)[0]


def _image_path(root: str, name: str, idx: int, ext: str) -> str:
    return os.path.join(root, name, f"{name}_{idx:04d}.{ext}")


def load_pairs_dir(
    dir_or_pairs_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    ext: str = "jpg",
    name: str | None = None,
) -> PairSet:
    """Load a pairs folder (``pairs.txt`` + one image folder per person) as a :class:`PairSet`.

    The pairs file may be in LFW format or a path pairs file (recognised by its
    first line, see the module docstring; ``ext`` is then unused).
    ``image_root`` defaults to the folder of the pairs file; ``name`` to that
    folder's name (or the file's stem when it is not called ``pairs.txt``).
    Folds come from the header when present, else 10 consecutive chunks.

    Raises:
        DataFormatError: no pairs file, malformed lines, or missing images
            (the message lists the first few).
    """
    src = Path(os.fspath(dir_or_pairs_file)).resolve()
    pairs_file = src / "pairs.txt" if src.is_dir() else src
    if not pairs_file.is_file():
        raise DataFormatError(f"{pairs_file}: pairs file not found")
    root = os.path.abspath(os.fspath(image_root)) if image_root is not None else str(pairs_file.parent)
    if name is None:
        name = pairs_file.parent.name if pairs_file.name == "pairs.txt" else pairs_file.stem

    if is_path_pairs_file(pairs_file):
        path_pairs, header = _parse_path_pairs_file(pairs_file)
        left = [os.path.join(root, *p.path1.split("/")) for p in path_pairs]
        right = [os.path.join(root, *p.path2.split("/")) for p in path_pairs]
        issame = np.array([p.issame for p in path_pairs], dtype=bool)
    else:
        pairs, header = _parse_pairs_file(pairs_file)
        ext = ext.lstrip(".")
        left = [_image_path(root, p.name1, p.idx1, ext) for p in pairs]
        right = [_image_path(root, p.name2, p.idx2, ext) for p in pairs]
        issame = np.array([p.issame for p in pairs], dtype=bool)
    missing = sorted(p for p in set(left) | set(right) if not os.path.isfile(p))
    if missing:
        shown = "\n  ".join(missing[:5])
        raise DataFormatError(
            f"{pairs_file}: {len(missing)} image file(s) referenced by the pairs are missing "
            f"under {root}, e.g.:\n  {shown}"
        )
    n = len(issame)
    if header is not None:
        folds = np.arange(n, dtype=np.int64) // (2 * header[1])
    else:
        folds = chunk_folds(n, DEFAULT_N_FOLDS)
    return PairSet(name=name, left=left, right=right, issame=issame, folds=folds)
