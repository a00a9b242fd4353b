"""Verification pairs for a custom identity folder, and InsightFace ``.bin`` files from pairs.

:func:`generate_pairs` draws an LFW-protocol pair set from an identity folder
(``root/<identity>/<images>``, see :mod:`arcface.data.folders`):

* ``n_folds`` folds, each ``n_per_fold`` *same* pairs (two different images of
  one identity) followed by ``n_per_fold`` *different* pairs (two identities);
* folds are person-disjoint: every identity belongs to exactly one fold and
  appears only in that fold's pairs;
* no pair (unordered pair of images) occurs twice in a fold;
* pairs are spread over identities (round-robin over the fold's identities for
  same pairs, distinct identity pairs for different pairs while there are
  enough), so one identity with hundreds of images does not dominate a fold;
* the result depends only on the folder's contents, the arguments and ``seed``
  (with a given numpy version).

:func:`write_pairs` writes LFW ``pairs.txt`` format when every image is named
``<name>/<name>_<NNNN>.<ext>`` (one extension throughout), else the path pairs
format of :mod:`arcface.data.pairs`; both are read back by
:func:`~arcface.data.pairs.load_pairs_dir` / ``load_verification_set``.
Entries are relative to the image root, which loaders take to be the pairs
file's folder unless told otherwise, so the natural place for the file is
``<root>/pairs.txt``.

:func:`make_verification_bin` packs a pairs file and its image folder into an
InsightFace ``.bin`` (the image files' bytes, unchanged).
"""

from __future__ import annotations

import heapq
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arcface.data.folders import DEFAULT_IMAGE_EXTENSIONS, ImageFolder, scan_image_folder
from arcface.data.pairs import (
    DEFAULT_N_FOLDS,
    PATH_PAIRS_MAGIC,
    LfwPair,
    PairSet,
    atomic_write,
    chunk_folds,
    load_pairs_dir,
    write_lfw_pairs,
)
from arcface.errors import DataFormatError

__all__ = ["GeneratedPairs", "BinStats", "generate_pairs", "write_pairs", "make_verification_bin"]

_LFW_STEM = re.compile(r"(.+)_(\d{4,})")


@dataclass(frozen=True)
class GeneratedPairs:
    """Pairs drawn by :func:`generate_pairs`.

    Attributes:
        root: absolute path of the identity folder.
        left, right: image paths relative to ``root`` (``/`` separators).
        issame: bool per pair.
        folds: fold index per pair; fold ``f`` is pairs ``2*f*n_per_fold`` ..
            ``2*(f+1)*n_per_fold - 1``, same pairs first.
        n_folds, n_per_fold: the protocol's shape.
        lfw_pairs: the same pairs as :class:`LfwPair` when every image of the
            folder follows LFW naming, else ``None``.
        lfw_ext: the extension of those LFW-named images (``None`` otherwise).
    """

    root: str
    left: tuple[str, ...]
    right: tuple[str, ...]
    issame: np.ndarray
    folds: np.ndarray
    n_folds: int
    n_per_fold: int
    lfw_pairs: tuple[LfwPair, ...] | None
    lfw_ext: str | None

    def __len__(self) -> int:
        return len(self.left)

    @property
    def is_lfw_style(self) -> bool:
        return self.lfw_pairs is not None

    def identities(self, i: int) -> tuple[str, str]:
        """Identity folder names of pair ``i``."""
        return self.left[i].split("/", 1)[0], self.right[i].split("/", 1)[0]

    def to_pair_set(self, name: str | None = None) -> PairSet:
        """A :class:`PairSet` of absolute image paths."""
        return PairSet(
            name=name if name is not None else os.path.basename(self.root),
            left=[os.path.join(self.root, *p.split("/")) for p in self.left],
            right=[os.path.join(self.root, *p.split("/")) for p in self.right],
            issame=self.issame.copy(),
            folds=self.folds.copy(),
        )


# ----------------------------------------------------------------------------- helpers


def _same_capacity(count: int) -> int:
    return count * (count - 1) // 2


def _cross_capacity(counts: Sequence[int]) -> int:
    """Unordered image pairs with the two images from different identities."""
    total = sum(counts)
    return (total * total - sum(c * c for c in counts)) // 2


def _unrank_pair(k: int) -> tuple[int, int]:
    """The ``k``-th pair ``(a, b)``, ``a < b``, in the order (0,1), (0,2), (1,2), (0,3)...."""
    b = (1 + math.isqrt(1 + 8 * k)) // 2
    return k - b * (b - 1) // 2, b


def _water_fill(caps: Sequence[int], n: int) -> list[int]:
    """Quotas summing to ``n``: every round, each unit (in order) with capacity left takes one more."""
    quotas = [0] * len(caps)
    remaining = n
    while remaining > 0:
        progressed = False
        for u, cap in enumerate(caps):
            if remaining == 0:
                break
            if quotas[u] < cap:
                quotas[u] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # guarded by the capacity check in generate_pairs
            raise AssertionError("water fill ran out of capacity")
    return quotas


def _distinct(rng: np.random.Generator, population: int, k: int) -> list[int]:
    """``k`` distinct integers from ``range(population)``, in increasing order."""
    if k >= population:
        return list(range(population))
    return sorted(int(v) for v in rng.choice(population, size=k, replace=False))


def _assign_folds(counts: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of every identity: big identities first, each to the fold that has the fewest so far.

    The seed decides the order among identities of equal size. Identities with
    2+ images are balanced on their number per fold (then same-pair capacity),
    single-image ones on the total number of identities per fold.
    """
    order = rng.permutation(len(counts))
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of = np.empty(len(counts), dtype=np.int64)
    members = [0] * n_folds
    heap = [(0, 0, f) for f in range(n_folds)]  # (multi-image identities, same capacity, fold)
    singles = []
    for i in order.tolist():
        c = int(counts[i])
        if c < 2:
            singles.append(i)
            continue
        n_multi, cap, f = heapq.heappop(heap)
        heapq.heappush(heap, (n_multi + 1, cap + _same_capacity(c), f))
        fold_of[i] = f
        members[f] += 1
    heap = [(members[f], f) for f in range(n_folds)]
    heapq.heapify(heap)
    for i in singles:
        n_members, f = heapq.heappop(heap)
        heapq.heappush(heap, (n_members + 1, f))
        fold_of[i] = f
    return fold_of


def _lfw_names(names: Sequence[str]) -> tuple[list[tuple[str, int]], str] | None:
    """``(name, idx)`` of every relative path and the extension, if all follow LFW naming."""
    parsed: list[tuple[str, int]] = []
    ext: str | None = None
    for rel in names:
        parts = rel.split("/")
        if len(parts) != 2:
            return None
        ident, filename = parts
        stem, dot, file_ext = filename.rpartition(".")
        m = _LFW_STEM.fullmatch(stem) if dot else None
        if m is None or m.group(1) != ident or any(ch.isspace() for ch in ident):
            return None
        idx = int(m.group(2))
        if f"{ident}_{idx:04d}" != stem:  # e.g. 5-digit zero-padded, which LFW naming cannot express
            return None
        if ext is None:
            ext = file_ext
        elif file_ext != ext:
            return None
        parsed.append((ident, idx))
    return (parsed, ext) if ext is not None else None


# ----------------------------------------------------------------------------- generation


def generate_pairs(
    folder: ImageFolder | str | os.PathLike,
    n_folds: int = DEFAULT_N_FOLDS,
    n_per_fold: int = 300,
    seed: int = 0,
    extensions: Sequence[str] = DEFAULT_IMAGE_EXTENSIONS,
) -> GeneratedPairs:
    """Draw LFW-protocol verification pairs from an identity folder (see the module docstring).

    Args:
        folder: an :class:`ImageFolder` or the root of one (scanned with ``extensions``).
        n_folds: number of person-disjoint folds.
        n_per_fold: same pairs, and also different pairs, per fold.
        seed: seeds both the identity-to-fold split and the pair sampling.

    Raises:
        ValueError: non-positive ``n_folds`` / ``n_per_fold`` or a negative seed.
        DataFormatError: the folder cannot be scanned, or cannot supply
            ``n_per_fold`` same and different pairs in every fold of the split
            (the message says how many per fold it can).
    """
    if n_folds < 1 or n_per_fold < 1:
        raise ValueError(f"n_folds and n_per_fold must be positive, got {n_folds} and {n_per_fold}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not isinstance(folder, ImageFolder):
        folder = scan_image_folder(folder, extensions)

    names = [folder.name(i) for i in range(len(folder))]
    images_of: list[list[int]] = [[] for _ in range(folder.num_classes)]
    for i, label in enumerate(folder.labels.tolist()):
        images_of[label].append(i)
    counts = np.array([len(v) for v in images_of], dtype=np.int64)

    rng = np.random.default_rng(seed)
    fold_of = _assign_folds(counts, n_folds, rng)
    members = [np.flatnonzero(fold_of == f).tolist() for f in range(n_folds)]  # sorted identities
    _check_capacity(folder, counts, members, n_folds, n_per_fold)

    left: list[str] = []
    right: list[str] = []
    issame: list[bool] = []
    for f in range(n_folds):
        same = _same_pairs(rng, [i for i in members[f] if counts[i] >= 2], images_of, n_per_fold)
        diff = _different_pairs(rng, members[f], images_of, n_per_fold)
        for block, flag in ((same, True), (diff, False)):
            block = sorted((names[a], names[b]) for a, b in block)
            left.extend(a for a, _ in block)
            right.extend(b for _, b in block)
            issame.extend([flag] * len(block))

    lfw = _lfw_names(names)
    lfw_pairs = lfw_ext = None
    if lfw is not None:
        by_name = dict(zip(names, lfw[0]))
        lfw_pairs = tuple(LfwPair(*by_name[a], *by_name[b]) for a, b in zip(left, right))
        lfw_ext = lfw[1]
    return GeneratedPairs(
        root=folder.root,
        left=tuple(left),
        right=tuple(right),
        issame=np.array(issame, dtype=bool),
        folds=np.arange(len(left), dtype=np.int64) // (2 * n_per_fold),
        n_folds=n_folds,
        n_per_fold=n_per_fold,
        lfw_pairs=lfw_pairs,
        lfw_ext=lfw_ext,
    )


def _check_capacity(folder: ImageFolder, counts: np.ndarray, members: list[list[int]],
                    n_folds: int, n_per_fold: int) -> None:
    same_caps = [sum(_same_capacity(int(counts[i])) for i in m) for m in members]
    diff_caps = [_cross_capacity([int(counts[i]) for i in m]) for m in members]
    possible = min(min(same_caps), min(diff_caps))
    if possible >= n_per_fold:
        return
    worst = min(range(n_folds), key=lambda f: (min(same_caps[f], diff_caps[f]), f))
    n_multi = int(np.count_nonzero(counts >= 2))
    what = (f"{folder.root}: cannot draw {n_folds} person-disjoint folds x {n_per_fold} same + "
            f"{n_per_fold} different pairs from {folder.num_classes} identities / {len(folder)} images")
    if n_multi < n_folds:
        raise DataFormatError(
            f"{what}: only {n_multi} identities have 2 or more images, and every fold needs at least one "
            f"for its same pairs, so at most {n_multi} fold(s) are possible"
        )
    raise DataFormatError(
        f"{what}: with this split (seed) at most {possible} pairs of each kind per fold are possible "
        f"(fold {worst} has {len(members[worst])} identities offering {same_caps[worst]} same and "
        f"{diff_caps[worst]} different image pairs); lower n_per_fold or n_folds"
    )


def _same_pairs(rng: np.random.Generator, identities: list[int], images_of: list[list[int]],
                n: int) -> list[tuple[int, int]]:
    """``n`` distinct same pairs, round-robin over ``identities`` in a seeded order."""
    order = [identities[k] for k in rng.permutation(len(identities)).tolist()]
    caps = [_same_capacity(len(images_of[i])) for i in order]
    out = []
    for i, quota in zip(order, _water_fill(caps, n)):
        imgs = images_of[i]
        for k in _distinct(rng, _same_capacity(len(imgs)), quota):
            a, b = _unrank_pair(k)
            out.append((imgs[a], imgs[b]))
    return out


def _different_pairs(rng: np.random.Generator, identities: list[int], images_of: list[list[int]],
                     n: int) -> list[tuple[int, int]]:
    """``n`` distinct different pairs: distinct identity pairs while there are enough of them."""
    m = len(identities)
    n_id_pairs = m * (m - 1) // 2
    if n_id_pairs >= n:
        units = [_unrank_pair(k) for k in _distinct(rng, n_id_pairs, n)]
        quotas = [1] * n
    else:
        units = [_unrank_pair(k) for k in rng.permutation(n_id_pairs).tolist()]
        caps = [len(images_of[identities[a]]) * len(images_of[identities[b]]) for a, b in units]
        quotas = _water_fill(caps, n)
    out = []
    for (a, b), quota in zip(units, quotas):
        imgs_a, imgs_b = images_of[identities[a]], images_of[identities[b]]
        for k in _distinct(rng, len(imgs_a) * len(imgs_b), quota):
            out.append((imgs_a[k // len(imgs_b)], imgs_b[k % len(imgs_b)]))
    return out


# ----------------------------------------------------------------------------- writing


def write_pairs(path: str | os.PathLike, pairs: GeneratedPairs, fmt: str = "auto") -> str:
    """Write ``pairs`` atomically; returns the format used, ``"lfw"`` or ``"paths"``.

    ``fmt="auto"`` picks LFW ``pairs.txt`` format when the folder follows LFW
    naming (:attr:`GeneratedPairs.is_lfw_style`), else the path pairs format.
    Both start with the ``n_folds<TAB>n_per_fold`` header (after the path
    format's comment lines) and hold no absolute path, so the same pairs give
    the same bytes wherever the folder lives.

    Raises:
        DataFormatError: ``fmt="lfw"`` for a folder without LFW naming, or a
            path the path format cannot hold (tab or line break in it).
        ValueError: unknown ``fmt``.
    """
    if fmt not in ("auto", "lfw", "paths"):
        raise ValueError(f"fmt must be 'auto', 'lfw' or 'paths', got {fmt!r}")
    if fmt == "lfw" and not pairs.is_lfw_style:
        raise DataFormatError(
            f"{pairs.root}: images are not all named <name>/<name>_<NNNN>.<ext> with one extension; "
            f"use the path pairs format"
        )
    if fmt == "lfw" or (fmt == "auto" and pairs.is_lfw_style):
        write_lfw_pairs(path, list(pairs.lfw_pairs), pairs.n_folds, pairs.n_per_fold)
        return "lfw"

    bad = next((p for p in pairs.left + pairs.right if re.search(r"[\t\r\n]", p)), None)
    if bad is not None:
        raise DataFormatError(f"{pairs.root}: image path {bad!r} contains a tab or line break")
    lines = [
        f"{PATH_PAIRS_MAGIC}: path1<TAB>path2<TAB>issame (1 = same identity, 0 = different)\n",
        "# paths are relative to the image root (by default the folder of this file)\n",
        f"# {pairs.n_folds} person-disjoint folds, each {pairs.n_per_fold} same then "
        f"{pairs.n_per_fold} different pairs\n",
        f"{pairs.n_folds}\t{pairs.n_per_fold}\n",
    ]
    lines += [f"{a}\t{b}\t{int(s)}\n" for a, b, s in zip(pairs.left, pairs.right, pairs.issame.tolist())]
    atomic_write(path, "".join(lines).encode("utf-8"))
    return "paths"


# ----------------------------------------------------------------------------- .bin


@dataclass(frozen=True)
class BinStats:
    """What :func:`make_verification_bin` wrote."""

    path: str
    n_pairs: int
    n_images: int  # distinct image files read
    n_bytes: int  # size of the .bin
    folds_preserved: bool  # whether readers' 10 consecutive chunks equal the pairs file's folds


def make_verification_bin(
    data_dir: str | os.PathLike,
    pairs_file: str | os.PathLike,
    out: str | os.PathLike,
    ext: str = "jpg",
    progress: bool = False,
) -> BinStats:
    """Pack the images of a pairs file into an InsightFace ``.bin`` (written atomically).

    ``pairs_file`` is in LFW format (images ``data_dir/<name>/<name>_<idx:04d>.<ext>``)
    or the path pairs format (``ext`` unused). Every image is stored as its
    file's bytes, without re-encoding; a file used by several pairs is read
    once and stored once (pickle shares the object). ``.bin`` files carry no
    folds: readers split them into 10 consecutive chunks, which
    :attr:`BinStats.folds_preserved` compares with the pairs file's folds.

    Raises:
        DataFormatError: ``data_dir`` or the pairs file is missing or malformed,
            or images are missing / unreadable.
    """
    root = os.path.abspath(os.fspath(data_dir))
    if not os.path.isdir(root):
        raise DataFormatError(f"{root}: data folder does not exist" if not os.path.exists(root)
                              else f"{root}: data folder is not a directory")
    pair_set = load_pairs_dir(pairs_file, image_root=root, ext=ext)
    unique = list(dict.fromkeys(pair_set.left + pair_set.right))
    cache: dict[str, bytes] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(unique), desc=f"reading {Path(root).name}", unit="img")
    try:
        for p in unique:
            try:
                with open(p, "rb") as f:
                    cache[p] = f.read()
            except OSError as e:
                raise DataFormatError(f"{p}: cannot read image ({e})") from None
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    from arcface.data.verification_bin import write_verification_bin

    write_verification_bin(out, [cache[p] for p in pair_set.left], [cache[p] for p in pair_set.right],
                           pair_set.issame)
    n = len(pair_set)
    return BinStats(
        path=os.path.abspath(os.fspath(out)),
        n_pairs=n,
        n_images=len(unique),
        n_bytes=os.path.getsize(out),
        folds_preserved=bool(np.array_equal(pair_set.folds, chunk_folds(n, DEFAULT_N_FOLDS))),
    )
