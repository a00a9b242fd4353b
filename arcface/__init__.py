"""iomface stage 1: face-embedding networks trained with margin-softmax heads.

Everything up to the embedding lives here; nothing in this package knows that
hash codes exist (that is :mod:`iom`).
"""

__version__ = "0.1.0"
