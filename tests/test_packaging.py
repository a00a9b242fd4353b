"""Packaging: the wheel carries the shipped models and the installed package works from any
directory, without the repository.

The wheel is built (no build isolation: offline) from a copy of the sources, so nothing is
written into the repository, and installed with ``--no-deps`` into a fresh virtual
environment. That environment gets no TensorFlow/Keras of its own: a ``.pth`` file whose line
is this interpreter's site-packages lets it import the dependencies already installed here.
Python appends such a line to ``sys.path`` without processing the ``.pth`` files inside that
folder, so the editable install of iomface that may live there (a ``.pth`` + import finder)
does not leak in; the tests check that ``iom`` and ``arcface`` come from the new environment.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_data

#: what a build of the project reads (pyproject.toml's metadata, setup.py's package list)
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "arcface", "iom", "models")
#: the package under which the wheel carries models/ (arcface.pretrained.MODELS_PACKAGE)
MODELS_PACKAGE = "iomface_models"
#: a genuine pair of pairs.txt, aligned 112x112 crops in ../shared/data/lfw_112 (its deep IoM
#: codes agree on ~0.72 of the positions under the default hasher; threshold ~0.29)
SAME_PERSON = ("Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0003.jpg")


def _version(dist: str) -> tuple[int, ...] | None:
    try:
        text = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


def _check_build_tools() -> None:
    setuptools = _version("setuptools") if importlib.util.find_spec("setuptools") else None
    if setuptools is None:
        pytest.skip("setuptools is not installed here: cannot build the wheel without build isolation")
    # setuptools < 70.1 builds wheels with the separate "wheel" package
    if setuptools < (70, 1) and importlib.util.find_spec("wheel") is None:
        pytest.skip("the 'wheel' package is not installed here (setuptools < 70.1 needs it to build wheels)")
    pip = _version("pip")
    if pip is None or pip < (22, 3):
        pytest.skip("pip >= 22.3 is needed here (pip --python installs into the fresh environment)")


def _clean_env() -> dict:
    """This process's environment (KERAS_BACKEND included) less what would import the repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _run(args, cwd, timeout=300, check=True):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n"
                             f"stderr:\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    _check_build_tools()
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheelhouse")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-w", out, src], cwd=src)
    (built,) = out.glob("iomface-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh virtual environment holding only the wheel; dependencies seen through a .pth."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(root / "env")
    bin_dir = root / "env" / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    paths = json.loads(_run([python, "-c", "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"],
                            cwd=root).stdout)
    # installed before the .pth exists: pip then sees an empty environment (and so can never
    # take this interpreter's iomface for the one to upgrade)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", wheel], cwd=root)
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(paths["purelib"]) / "iomface_test_dependencies.pth").write_text("".join(p + "\n" for p in deps))
    return {"python": python, "scripts": Path(paths["scripts"]), "site": Path(paths["purelib"]),
            "cwd": root}


def test_wheel_carries_the_shipped_models_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"{MODELS_PACKAGE}/{p.relative_to(REPO / 'models').as_posix()}"
               for p in (REPO / "models").glob("*/*") if p.is_file() and not p.name.startswith(".")}
    assert shipped and shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
    assert f"{MODELS_PACKAGE}/mobilefacenet_ms1m/backbone.weights.h5" in names
    assert f"{MODELS_PACKAGE}/mobilefacenet_ms1m/NOTICE" in names
    hashers = [n for n in names if n.startswith(f"{MODELS_PACKAGE}/iom_") and n.endswith("/hasher.weights.h5")]
    assert hashers, "no hasher weights (iomface_models/iom_*/hasher.weights.h5) in the wheel"
    # nothing but the packages, their models and the metadata: no caches, tests, outputs, .venv
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"arcface", "iom", MODELS_PACKAGE}
    assert len([t for t in tops if t.endswith(".dist-info")]) == 1
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(MODELS_PACKAGE) and n.count("/") != 2]
    assert f"{MODELS_PACKAGE}/__init__.py" not in names  # a data folder, not a model beside the others


def test_installed_package_finds_its_models_from_any_directory(installed):
    code = ("import json, os, arcface, iom\n"
            "from arcface.pretrained import DEFAULT_MODEL, MODELS_DIR, list_pretrained\n"
            "from iom.defaults import DEFAULT_HASHER\n"
            "print(json.dumps({'iom': iom.__file__, 'arcface': arcface.__file__, 'models': MODELS_DIR,"
            " 'pretrained': list_pretrained(), 'folders': sorted(os.listdir(MODELS_DIR)),"
            " 'default_model': DEFAULT_MODEL, 'default_hasher': DEFAULT_HASHER}))")
    got = json.loads(_run([installed["python"], "-c", code], cwd=installed["cwd"]).stdout)
    site = installed["site"].resolve()
    for key in ("iom", "arcface", "models"):
        assert Path(got[key]).resolve().is_relative_to(site), f"{key} comes from {got[key]}, not {site}"
    assert Path(got["models"]).name == MODELS_PACKAGE
    assert got["default_model"] in got["pretrained"]
    assert got["default_hasher"] in got["folders"]
    assert set(got["folders"]) == {p.name for p in (REPO / "models").iterdir() if p.is_dir()}
    models = Path(got["models"])
    for name in got["folders"]:
        assert {p.name for p in (models / name).iterdir()} == \
            {p.name for p in (REPO / "models" / name).iterdir() if not p.name.startswith(".")}
    help_text = _run([installed["scripts"] / "iomface", "--help"], cwd=installed["cwd"]).stdout
    assert "usage: iomface" in help_text


def test_installed_iomface_compares_two_photos(installed):
    lfw = shared_data("lfw_112")
    a, b = (lfw / p for p in SAME_PERSON)
    result = _run([installed["scripts"] / "iomface", "compare", a, b, "--aligned", "--json"],
                  cwd=installed["cwd"], check=False)
    assert result.returncode == 0, (f"iomface compare exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}"
                                    f"\nstderr:\n{result.stderr[-4000:]}")
    out = json.loads(result.stdout)
    assert isinstance(out["accepted"], bool) and out["accepted"] is True
    assert 0.0 <= float(out["similarity"]) <= 1.0
