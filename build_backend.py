"""setuptools' build backend, without its notice on every editable install.

``aavs`` is one namespace package assembled from three top-level folders (``package-dir`` in
pyproject.toml, so that ``import aavs.datasets`` never shadows Hugging Face's ``datasets``). For such a
layout setuptools installs in editable mode through a meta path finder and then always warns "Please
be careful with folders in your working directory with the same name as your package": a notice
about a layout we chose on purpose, with nothing for the person installing to do. Everything else is
setuptools' own.
"""

from __future__ import annotations

import warnings

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 - the other PEP 517/660 hooks, unchanged


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Editable installation")
        return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
