"""Face-embedding backbones (Keras 3, backend-agnostic, channels-last).

Build one by name::

    from arcface.backbones import build_backbone, list_backbones
    model = build_backbone("IR_50", embd_shape=512, input_size=112)

Every model maps RGB images ``(B, s, s, 3)`` in 0..255 (uint8 or float) to
``(B, embd_shape)`` float embeddings (not L2-normalised).
"""

from .registry import (
    build_backbone,
    get_backbone_builder,
    list_backbones,
    register_backbone,
    unregister_backbone,
)

# Importing the modules registers their backbones.
from . import fmobilenet, iresnet, keras_apps, mobilefacenet, mobilefacenet_tf  # noqa: E402,F401
from .common import PixelNormalization, count_reference_parameters  # noqa: E402

__all__ = [
    "build_backbone",
    "list_backbones",
    "register_backbone",
    "unregister_backbone",
    "get_backbone_builder",
    "count_reference_parameters",
    "PixelNormalization",
]
