"""pyproject.toml reads without a setuptools warning: every `pip install` of dyllm once printed a
deprecation notice for the licence written as a table (now an SPDX expression, PEP 639)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_reads_without_a_setuptools_warning() -> None:
    pytest.importorskip("setuptools", minversion="77")  # what [build-system] requires
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    distribution = Distribution()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_configuration(distribution, ROOT / "pyproject.toml")
    assert distribution.metadata.license_expression == "Apache-2.0"
    assert distribution.entry_points["console_scripts"] == ["dyllm = dyllm_launcher:main"]
