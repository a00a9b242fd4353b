"""One export, start to finish: check the arguments, convert into a temporary folder, rename.

Nothing is written when anything fails: the model, ``reference.py`` and ``export.json`` are
made in a hidden sibling folder of the output (``.NAME.tmp-*``) that replaces the output only
once complete; a failure removes it (and any parent folder this call created).

The converters need Keras' TensorFlow backend. Called in a process whose Keras runs another
backend (JAX), :func:`export` runs the conversion in a child process,
``python -m iom.export ...`` with ``KERAS_BACKEND=tensorflow``, after checking the arguments
itself; the child's typed error comes back as an :class:`~iom.export.ExportError`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from iom.export.spec import (CROP_SIZE_RANGE, DEFAULT_CROP_SIZE, FORMATS, MANIFEST_FILE, REFERENCE_FILE,
                             VARIANTS, ExportError)


def check_arguments(hasher_name: str, fmt: str, out_dir, variant: str = "face", crop_size=None,
                    force: bool = False) -> tuple[dict, int | None, str]:
    """``(shipped hasher info, crop size, absolute output folder)``, or an :class:`ExportError`
    naming the bad argument. Reads the hasher's JSON and config files only (no Keras)."""
    from iom.errors import InvalidInputError
    from iom.service.pipeline import Pipeline

    from iom.export.convert import require_converter

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    require_converter(fmt)
    if variant not in VARIANTS:
        raise ExportError(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
    if variant == "face":
        if crop_size is not None:
            raise ExportError("--crop_size applies to --variant crop only (the face variant takes the "
                              "aligned crop at the backbone's input size)")
    else:
        crop_size = DEFAULT_CROP_SIZE if crop_size is None else crop_size
        lo, hi = CROP_SIZE_RANGE
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or not lo <= crop_size <= hi:
            raise ExportError(f"crop_size must be an integer in [{lo}, {hi}], got {crop_size!r}")
    try:
        info = Pipeline.shipped(hasher_name)
    except InvalidInputError as e:
        raise ExportError(str(e)) from None
    with open(os.path.join(info["folder"], "hasher.json")) as f:
        key_mode = json.load(f).get("key_mode", "code")
    if key_mode != "code":
        raise ExportError(f"hasher {hasher_name!r} has key_mode {key_mode!r}: its key acts inside the "
                          "network, so its code cannot be keyed on the device afterwards (export needs "
                          "key_mode 'code')")
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise ExportError(f"output folder must be a path, got {out_dir!r}")
    out = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out) or os.path.islink(out):
        if not os.path.isdir(out) or os.path.islink(out):
            raise ExportError(f"output {out} exists and is not a folder")
        if os.listdir(out) and not force:
            raise ExportError(f"output folder {out} is not empty: choose another or pass --force to replace it")
    return info, crop_size, out


def _keras_backend() -> str:
    import keras

    return keras.backend.backend()


def export(hasher_name: str, fmt: str, out_dir, variant: str = "face", crop_size: int | None = None,
           force: bool = False) -> dict:
    """Export shipped hasher ``hasher_name`` (with its stage-1 model) in format ``fmt`` (a key of
    :data:`~iom.export.FORMATS`) to the folder ``out_dir``; returns the manifest written there
    as ``export.json``. ``variant`` ``"face"`` takes aligned 112x112 crops, ``"crop"`` square
    crops of ``crop_size`` (default 160). An existing non-empty ``out_dir`` needs ``force``."""
    info, crop_size, out = check_arguments(hasher_name, fmt, out_dir, variant, crop_size, force)
    if _keras_backend() != "tensorflow":
        return _export_in_child(hasher_name, fmt, out, variant, crop_size, force)
    return _export_here(hasher_name, fmt, out, variant, crop_size)


def _export_in_child(hasher_name, fmt, out, variant, crop_size, force) -> dict:
    """The same export in ``python -m iom.export`` under the TensorFlow backend."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cmd = [sys.executable, "-m", "iom.export", "--hasher", hasher_name, "--format", fmt, "--variant", variant,
           "--out", out] + (["--crop_size", str(crop_size)] if variant == "crop" else []) + \
          (["--force"] if force else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
        raise ExportError(errors[-1] if errors else
                          f"the export child process (KERAS_BACKEND=tensorflow) failed with exit code "
                          f"{proc.returncode}: {' | '.join(lines[-5:])}")
    with open(os.path.join(out, MANIFEST_FILE)) as f:
        return json.load(f)


def _missing_parents(path: str) -> list[str]:
    """The ancestors of ``path`` that do not exist, outermost first."""
    missing = []
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    return missing[::-1]


def _export_here(hasher_name, fmt, out, variant, crop_size) -> dict:
    import iom.export.reference as reference
    from iom.export.convert import convert
    from iom.export.manifest import build_manifest, file_table
    from iom.export.model import input_spec, load_code_model, output_spec

    created = _missing_parents(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
    try:
        model, info = load_code_model(hasher_name, variant, crop_size or DEFAULT_CROP_SIZE)
        try:
            convert(model, fmt, os.path.join(tmp, FORMATS[fmt]))
        except ExportError:
            raise
        except Exception as e:  # a converter's own error (TF, tf2onnx): typed, with its message
            raise ExportError(f"{fmt} conversion failed: {type(e).__name__}: {e}") from e
        shutil.copyfile(reference.__file__, os.path.join(tmp, REFERENCE_FILE))
        manifest = build_manifest(info, fmt, FORMATS[fmt], variant, crop_size,
                                  input_spec(variant, int(info["input_size"]), crop_size or DEFAULT_CROP_SIZE),
                                  output_spec(info["m"], info["q"], info["dim"]), file_table(tmp))
        with open(os.path.join(tmp, MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)                 # mkdtemp made it 0700
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created[:1]:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return manifest


def _replace(tmp: str, out: str) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing what is there (checked before)."""
    if not os.path.exists(out):
        os.rename(tmp, out)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
