"""Face detection (MTCNN) and five-point alignment to the ArcFace 112x112 template.

:class:`FaceAligner` takes an image (a path, encoded bytes or an array), finds faces
with the MTCNN detector of the ``mtcnn`` package, picks one (or all) of them and warps
each to ``size x size`` with the least-squares similarity transform (rotation, uniform
scale, translation; Umeyama's method) that maps its five landmarks onto
:data:`ARCFACE_TEMPLATE`. :func:`align_folder` does the same for a whole folder tree and
writes a resumable ``manifest.tsv``.

The package, one concept a module (each imports only the ones above it):

* :mod:`~arcface.align.geometry`: the template, the similarity fit, the warp, the centre crop,
  the face-choice score;
* :mod:`~arcface.align.inputs`: paths, bytes and arrays to RGB uint8;
* :mod:`~arcface.align.plan`: the PNet pyramid plan that works around mtcnn 1.0.0's pyramid;
* :mod:`~arcface.align.detector`: the shared MTCNN detector, its networks in TensorFlow ops and
  the whole pyramid in one call;
* :mod:`~arcface.align.aligner`: :class:`FaceAligner` (typed errors, face choice, batches);
* :mod:`~arcface.align.folders`: :func:`align_folder` and its manifest.

Importing it imports neither TensorFlow nor mtcnn; the first detection does.
"""

from arcface.align.aligner import MAX_BATCH_PIXELS, SELECT_POLICIES, AlignedFace, FaceAligner  # noqa: F401
from arcface.align.detector import PyramidPNet, StageNetwork, _get_detector, get_detector  # noqa: F401
from arcface.align.folders import (FALLBACKS, MANIFEST_COLUMNS, MANIFEST_NAME, WORKER_TYPES,  # noqa: F401
                                   FolderSummary, align_folder, read_manifest)
from arcface.align.geometry import (ARCFACE_TEMPLATE, CENTER_WEIGHT, center_crop, center_scores,  # noqa: F401
                                    estimate_similarity, landmark_inliers, warp_face)
from arcface.align.inputs import to_rgb
from arcface.align.plan import PNET_WINDOW, SCALE_FACTOR, SEARCH_FACE_SIZE, DetectionPlan, plan_detection  # noqa: F401

__all__ = [
    "ARCFACE_TEMPLATE",
    "AlignedFace",
    "DetectionPlan",
    "FaceAligner",
    "FolderSummary",
    "MANIFEST_NAME",
    "align_folder",
    "center_crop",
    "center_scores",
    "estimate_similarity",
    "plan_detection",
    "read_manifest",
    "to_rgb",
    "warp_face",
]
