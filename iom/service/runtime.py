"""Which runtime embeds a pipeline's faces: the Keras backbone, or its TFLite file.

A stage-1 model folder may hold, beside ``backbone.weights.h5``, ``embedder.tflite`` (the same
backbone converted by ``scripts/export_runtime.py``) and ``runtime.json``, its record: the
file's SHA-256, the SHA-256 of the weights it was converted from, the converter's versions and
the equivalence measured (faces, share of identical un-keyed codes for each shipped hasher on
the model, smallest embedding cosine). :func:`choose_runtime` reads them (no Keras, no
interpreter import) and decides:

==========  ==================================================================================
runtime     embeds with
==========  ==================================================================================
``keras``   the Keras backbone (:class:`arcface.embed.Embedder`), always
``tflite``  the TFLite file (:class:`arcface.runtime.TFLiteEmbedder`): refused, naming the
            file, unless an interpreter is installed, ``runtime.json`` is readable, the file's
            SHA-256 is the recorded one and the recorded weights are the weights the Keras
            path would load
``auto``    ``tflite`` when all of that holds *and* the record says every un-keyed code of the
            hasher (and of every hasher it was measured for) was identical; else ``keras``
==========  ==================================================================================

Only the backbone changes: the hasher (Keras), the keys and the aligner are the same either way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from iom.errors import InvalidInputError

RUNTIMES = ("auto", "keras", "tflite")
RUNTIME_FILE = "runtime.json"
TFLITE_FILE = "embedder.tflite"
RUNTIME_FORMAT = 1


@dataclass(frozen=True)
class RuntimeChoice:
    """What :func:`choose_runtime` decided: ``runtime`` (``"keras"`` or ``"tflite"``), why,
    what was asked (``requested``), and for TFLite the file and its checked SHA-256."""

    runtime: str
    reason: str
    requested: str = "auto"
    path: str | None = None
    sha256: str | None = None

    def describe(self) -> str:
        """One line: the runtime, and why (for ``--verbose``)."""
        what = f"TFLite ({os.path.basename(self.path)})" if self.runtime == "tflite" else "Keras"
        return f"stage-1 runtime {what}, --runtime {self.requested}: {self.reason}"


def read_record(stage1_folder: str) -> dict:
    """``runtime.json`` of a stage-1 model folder; :class:`InvalidInputError` naming the file
    when it is missing, unreadable or not a record of this format."""
    path = os.path.join(stage1_folder, RUNTIME_FILE)
    if not os.path.isfile(path):
        raise InvalidInputError(f"{path}: no such file (make it with scripts/export_runtime.py)")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{path}: unreadable ({e})") from None
    if not isinstance(record, dict) or record.get("format_version") != RUNTIME_FORMAT:
        raise InvalidInputError(f"{path}: not a runtime record of format {RUNTIME_FORMAT}")
    try:
        name = record["file"]
        well_formed = (isinstance(record["sha256"], str) and isinstance(record["source"]["weights"]["sha256"], str)
                       and isinstance(record["equivalence"]["hashers"], dict))
    except (KeyError, TypeError):
        well_formed = False
    if not well_formed:
        raise InvalidInputError(f"{path}: a field is missing or malformed (file, sha256, source.weights.sha256, "
                                "equivalence.hashers)")
    if not isinstance(name, str) or os.path.basename(name) != name or name.startswith("."):
        raise InvalidInputError(f"{path}: 'file' must be a file name in the same folder, got {name!r:.80}")
    return record


def _checked_tflite(info: dict) -> tuple[str, str, dict]:
    """``(tflite path, its SHA-256, the record)`` once the file, the record and the weights
    agree; else :class:`InvalidInputError` naming the missing or mismatched file."""
    from arcface.pretrained import sha256_file
    from arcface.runtime import interpreter_name

    if interpreter_name() is None:
        raise InvalidInputError("no TFLite interpreter is installed: pip install ai-edge-litert (or TensorFlow)")
    folder = info["stage1_folder"]
    record = read_record(folder)
    path = os.path.join(folder, record["file"])
    if not os.path.isfile(path):
        raise InvalidInputError(f"{path}: no such file ({RUNTIME_FILE} records it; make it with "
                                "scripts/export_runtime.py)")
    digest = sha256_file(path)
    if digest != record["sha256"]:
        raise InvalidInputError(f"{path}: SHA-256 {digest[:16]}… is not the {record['sha256'][:16]}… that "
                                f"{RUNTIME_FILE} records (a changed or replaced file)")
    weights = info["stage1_weights"]
    want = record["source"]["weights"]["sha256"]
    got = sha256_file(weights) if os.path.isfile(weights) else None
    if got != want:
        raise InvalidInputError(f"{os.path.join(folder, RUNTIME_FILE)}: {record['file']} was converted from "
                                f"weights with SHA-256 {want[:16]}…, but the Keras path loads {weights} "
                                f"({'missing' if got is None else 'SHA-256 ' + got[:16] + '…'})")
    return path, digest, record


def _equivalence_problem(record: dict, hasher: str) -> str | None:
    """Why the record does not show every code identical for ``hasher`` (``None``: it does)."""
    hashers = record["equivalence"]["hashers"]
    if hasher not in hashers:
        return (f"{RUNTIME_FILE} records no equivalence for hasher {hasher!r} (measured for "
                f"{', '.join(sorted(hashers)) or 'none'})")
    for name, figures in sorted(hashers.items()):
        share = figures.get("identical_codes") if isinstance(figures, dict) else None
        if share != 1.0:
            return f"{RUNTIME_FILE} records {share!r} of the codes of hasher {name!r} identical, not all"
    return None


def choose_runtime(requested: str, info: dict) -> RuntimeChoice:
    """The runtime for ``requested`` (``auto``, ``keras`` or ``tflite``) and a shipped hasher's
    ``info`` (:meth:`iom.service.pipeline.Pipeline.shipped`: its ``folder``, ``stage1_folder``
    and ``stage1_weights``). Reads files only. ``tflite`` without a valid file is an
    :class:`InvalidInputError` naming the file; ``auto`` then falls back to Keras, saying why."""
    if requested not in RUNTIMES:
        raise InvalidInputError(f"runtime {requested!r:.40} is not one of {', '.join(RUNTIMES)}")
    if requested == "keras":
        return RuntimeChoice("keras", "as asked", requested)
    hasher = os.path.basename(info["folder"])
    try:
        path, digest, record = _checked_tflite(info)
    except InvalidInputError as e:
        if requested == "tflite":
            raise InvalidInputError(f"--runtime tflite: {e}") from None
        return RuntimeChoice("keras", f"no valid TFLite file: {e}", requested)
    problem = _equivalence_problem(record, hasher)
    faces = record["equivalence"].get("faces")
    if problem is None:
        return RuntimeChoice("tflite", f"{RUNTIME_FILE} matches the weights; every un-keyed code identical on "
                                       f"{faces} faces", requested, path, digest)
    if requested == "tflite":
        return RuntimeChoice("tflite", f"as asked, although {problem}", requested, path, digest)
    return RuntimeChoice("keras", problem, requested)
