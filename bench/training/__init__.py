"""What ``bench/train_throughput.py`` times: :mod:`.decode` (figure (a), the loader alone) and
:mod:`.step` (figures (b) and (c), the real training step, fed synthetic batches or the loader)."""
