"""Embedding photos that may not be aligned: the check that inputs are aligned crops (header
only), and MTCNN alignment then embedding (``scripts/get_embd.py --align``)."""

from __future__ import annotations

#: images per MTCNN call (and per embedding batch) with --align
ALIGN_CHUNK = 32
#: unaligned or faceless inputs an error message names before "and N more"
SHOWN = 5


def _listing(items: list[str]) -> str:
    more = f", and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def check_aligned(names, paths, size: int, read_path: str) -> None:
    """Refuse (:class:`~arcface.errors.UnalignedImageError`) inputs that are not ``size`` x
    ``size`` crops, reading only the image headers; the message names them and the fix."""
    from arcface.data.images import image_size
    from arcface.errors import UnalignedImageError

    wrong = []
    for name, path in zip(names, paths):
        width, height = image_size(path)
        if (width, height) != (size, size):
            wrong.append((name, f"{width}x{height}"))
    if not wrong:
        return
    src = read_path if len(paths) > 1 else "DIR"
    fix = (f"pass --align to detect and align the faces with MTCNN, or align a folder once with "
           f"`python scripts/align_dataset.py --src {src} --dst ALIGNED_DIR` and embed ALIGNED_DIR; "
           f"nothing was written")
    if len(paths) == 1:
        raise UnalignedImageError(f"{paths[0]} is {wrong[0][1]}, not an aligned "
                                  f"{size}x{size} face crop (the model's input_size): {fix}")
    raise UnalignedImageError(f"{len(wrong)} of {len(paths)} images in {read_path} are not aligned "
                              f"{size}x{size} face crops (the model's input_size): "
                              f"{_listing([f'{name} ({dims})' for name, dims in wrong])}. "
                              f"To embed them, {fix}")


def embed_aligned(embedder, names, paths, size: int, center_crop: bool):
    """Detect, align (MTCNN, five points) and embed each image; an image without a usable face
    is an error (:class:`~arcface.errors.IomfaceError`, the detector's own type for a single
    image) naming every such image."""
    import numpy as np
    from tqdm import tqdm

    from arcface.align import FaceAligner
    from arcface.data.loader import fit_to_size
    from arcface.errors import DataFormatError

    aligner = FaceAligner(size=size, batch_size=ALIGN_CHUNK)
    chunks, failed = [], []
    with tqdm(total=len(paths), desc="aligning + embedding", unit="img") as bar:
        for start in range(0, len(paths), ALIGN_CHUNK):
            results = aligner.align_batch(paths[start:start + ALIGN_CHUNK])
            crops = []
            for name, result in zip(names[start:], results):
                if isinstance(result, BaseException):
                    failed.append((name, result))
                else:
                    crops.append(fit_to_size(result[0].image, size, center_crop))
            if crops and not failed:
                chunks.append(embedder.embed_arrays(np.stack(crops)))
            bar.update(len(results))
    if len(paths) == 1 and failed:
        raise failed[0][1]
    if failed:
        reasons = [f"{name} ({type(e).__name__})" for name, e in failed]
        raise DataFormatError(f"--align: no usable face in {len(failed)} of {len(paths)} images: "
                              f"{_listing(reasons)}; nothing was written. Align the folder with "
                              f"scripts/align_dataset.py (its manifest lists the failures, "
                              f"--fallback center keeps a centre crop) and embed the aligned copy")
    return np.concatenate(chunks)
