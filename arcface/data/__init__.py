"""Data access for iomface: image codecs, image folders, RecordIO and verification pair sets.

Nothing here imports TensorFlow, JAX or Keras; input pipelines build on these
readers (``read_bytes(i)`` + :func:`decode_image`).
"""

from arcface.data.folders import DEFAULT_IMAGE_EXTENSIONS, ImageFolder, scan_image_folder
from arcface.data.images import decode_image, encode_jpeg, encode_png
from arcface.data.pairs import (
    DEFAULT_N_FOLDS,
    LfwPair,
    PairSet,
    chunk_folds,
    load_pairs_dir,
    read_lfw_pairs,
    write_lfw_pairs,
)
from arcface.data.recordio import (
    RECORDIO_MAGIC,
    IRHeader,
    RecordIODataset,
    iter_records,
    pack_header,
    pack_record,
    read_record_at,
    unpack_header,
    write_insightface_recordio,
)
from arcface.data.verification_bin import read_verification_bin, write_verification_bin
from arcface.data.verification_sets import load_verification_set

__all__ = [
    "DEFAULT_IMAGE_EXTENSIONS",
    "DEFAULT_N_FOLDS",
    "IRHeader",
    "ImageFolder",
    "LfwPair",
    "PairSet",
    "RECORDIO_MAGIC",
    "RecordIODataset",
    "chunk_folds",
    "decode_image",
    "encode_jpeg",
    "encode_png",
    "iter_records",
    "load_pairs_dir",
    "load_verification_set",
    "pack_header",
    "pack_record",
    "read_lfw_pairs",
    "read_record_at",
    "read_verification_bin",
    "scan_image_folder",
    "unpack_header",
    "write_insightface_recordio",
    "write_lfw_pairs",
    "write_verification_bin",
]
