"""Typed errors raised by iomface.

Every error a user can trigger with bad input derives from :class:`IomfaceError`,
so callers can catch the whole family while tests assert the precise type.
"""


class IomfaceError(Exception):
    """Base class of every error iomface raises on purpose."""


class ConfigError(IomfaceError, ValueError):
    """A configuration file or dict is invalid; the message names the key."""


class DataFormatError(IomfaceError, ValueError):
    """A data file (RecordIO, .bin, pairs.txt, image folder) is malformed."""


class UnalignedImageError(DataFormatError):
    """An image given where an aligned face crop is expected is not ``input_size`` pixels a
    side (a raw photo): align it first (``--align``, scripts/align_dataset.py)."""


class ImageDecodeError(DataFormatError):
    """Bytes or a file could not be decoded as an image."""


class CheckpointError(IomfaceError, RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model."""


class NoFaceError(IomfaceError, ValueError):
    """The face detector found no face (at the required confidence) in an image."""


class FaceTooSmallError(IomfaceError, ValueError):
    """Faces were found but all are smaller than ``min_face_size``, or the image itself is
    smaller than the 12-pixel window the detector searches with."""


class ImageTooLargeError(ImageDecodeError):
    """An image's header says it is over the decode limits, or decoding it ran out of memory."""
