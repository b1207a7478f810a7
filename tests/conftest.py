"""Shared test helpers.

Tolerances (relative to the largest gradient entry of the reference):
float64 1e-9, float32 1e-4; kernels state theirs in their own test files.
"""
from __future__ import annotations

import os

# Without a GPU the Triton kernels are tested in the interpreter, which must be chosen before
# anything (transformers, sentence-transformers, ...) imports triton.
if os.environ.get("GRADSURG_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

#: the STS-B train/dev splits shipped inside the package (gzip'd CSVs; gradsurg/data/README.md)
STSB_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "gradsurg", "data")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(max |b|, tiny): error relative to the reference's scale."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().clamp(min=1e-300)
    return float((a - b).abs().max() / scale)


@pytest.fixture
def stsb_dir():
    """The packaged STS-B folder (``stsb-en-train.csv.gz``, ``stsb-en-dev.csv.gz``): always present."""
    path = os.path.abspath(STSB_DIR)
    assert os.path.isdir(path), f"the packaged STS-B data is missing from {path}"
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds (still run in CI; "
                                       "deselect with -m 'not slow')")
