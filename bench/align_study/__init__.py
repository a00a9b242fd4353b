"""The pieces of ``bench/alignment_study.py``: :mod:`.geometry` (the similarity warps and the
re-warp that approximates an lstsq crop), :mod:`.model` (the TFLite embedder and the embedding
cache), :mod:`.metrics` (the LFW protocol rows, the upstream VAL, McNemar, the table),
:mod:`.validation` (the re-warp checked on the raw photos)."""
