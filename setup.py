"""Package list for setuptools; the project's metadata lives in pyproject.toml.

Only what pyproject.toml cannot say: the shipped models folder ``models/`` is installed as
package data of ``iomface_models`` (a data-only package, no ``__init__.py`` is added to
``models/``), so that ``pip install .`` and the wheel carry the models beside ``arcface``
and ``iom`` in site-packages. ``arcface.pretrained.MODELS_DIR`` finds them there, or the
repository's ``models/`` in a clone or an editable install.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["arcface", "arcface.*", "iom", "iom.*"]) + ["iomface_models"],
    package_dir={"iomface_models": "models"},
    # every file of every model folder (models/NAME/FILE); hidden and temporary files
    # (".tmp-*" of an interrupted write) are left out: '*' does not match a leading dot
    package_data={"iomface_models": ["*/*"]},
    include_package_data=False,
)
