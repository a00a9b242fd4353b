"""``export.json``: what a device needs to run an exported model and key its codes."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

from arcface.pretrained import sha256_file

MANIFEST_VERSION = 1


def file_table(root: str) -> dict:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``root`` (sorted, '/' separators)."""
    table = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            table[rel] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    return table


def versions(fmt: str) -> dict:
    """Versions of what made the export (``None`` for a package that is not installed)."""
    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    out = {"iomface": version("iomface"), "python": platform.python_version(), "keras": version("keras"),
           "tensorflow": version("tensorflow-cpu") or version("tensorflow"), "numpy": version("numpy")}
    if fmt == "onnx":
        from iom.export.convert import ONNX_OPSET

        out.update(tf2onnx=version("tf2onnx"), onnx=version("onnx"), onnx_opset=ONNX_OPSET)
    return out


def build_manifest(info: dict, fmt: str, model_path: str, variant: str, crop_size: int | None,
                   input_spec: dict, outputs: list, files: dict) -> dict:
    """The manifest of one export (``files``: :func:`file_table` of the output folder)."""
    from iom.search.packing import packed_nbytes

    m, q = int(info["m"]), int(info["q"])
    return {
        "manifest_version": MANIFEST_VERSION,
        "model_id": info["model_id"], "hasher": os.path.basename(info["folder"]),
        "stage1_model": info["stage1_model"], "m": m, "q": q, "embedding_dim": int(info["dim"]),
        "variant": variant, "crop_size": crop_size if variant == "crop" else None,
        "format": fmt, "model": model_path,
        "model_sha256": files.get(model_path, {}).get("sha256") or files.get(
            f"{model_path}/saved_model.pb", {}).get("sha256"),
        "input": input_spec, "outputs": outputs,
        "keying": {"reference": "reference.py", "key_bytes": 32,
                   "purpose": f"code-relabelling/m={m}/q={q}", "packed_bytes": packed_nbytes(m, q),
                   "how": "template = reference.template_bytes(code, [key, ...], m, q): the code "
                          "relabelled by each key in turn, then bit-sliced and packed"},
        "source_sha256": {name: sha256_file(path) for name, path in info["weights"].items()},
        "files": files, "versions": versions(fmt),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
