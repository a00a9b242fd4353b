"""Figure (a) of ``bench/train_throughput.py``: the training loader alone, decoding JPEGs."""

from __future__ import annotations

import time

import numpy as np


def warm_page_cache(source, limit: int = 50_000) -> float:
    """Read the first ``limit`` encoded images once, so that no figure pays for cold
    storage (the GPU machine reads a freshly copied folder, already cached). Seconds."""
    start = time.perf_counter()
    for i in range(min(len(source), limit)):
        source.read_bytes(i)
    return time.perf_counter() - start


def measure_decode(source, batch_size: int, workers: int, input_size: int, seed: int,
                   min_batches: int, min_seconds: float) -> dict:
    """Images/s of a NumpyBatchLoader with ``workers`` threads, consumed as fast as it goes.

    The first ``workers + 1`` batches (thread start, first reads) are not timed; then the
    clock runs until at least ``min_batches`` batches and ``min_seconds`` have passed."""
    from arcface.data.loader import BatchSchedule, NumpyBatchLoader

    loader = NumpyBatchLoader(source, BatchSchedule(len(source), batch_size, seed),
                              input_size=input_size, workers=workers)
    batches = iter(loader)
    try:
        for _ in range(workers + 1):
            next(batches)
        n = 0
        start = time.perf_counter()
        while n < min_batches or time.perf_counter() - start < min_seconds:
            images, _ = next(batches)
            n += 1
        seconds = time.perf_counter() - start
    finally:
        batches.close()
    if images.shape != (batch_size, input_size, input_size, 3) or images.dtype != np.uint8:
        raise RuntimeError(f"the loader gave a batch of {images.shape} {images.dtype}")
    return {"workers": workers, "batches": n, "images": n * batch_size, "seconds": round(seconds, 3),
            "images_per_s": round(n * batch_size / seconds, 1)}
