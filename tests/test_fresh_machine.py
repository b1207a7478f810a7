"""What a newcomer runs from the repository root works: nothing there shadows an installed distribution.

The root is on ``sys.path`` for ``python -m pytest``, ``python -c`` and every script started there. A
top-level package named like an installed distribution (``kernels/__init__.py`` shadowed Hugging
Face's ``kernels``, which transformers imports) breaks transformers and sentence-transformers for
every such user. Each check runs in a fresh interpreter with the root as working directory.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(code: str, cwd=ROOT, timeout=300, **env):
    environ = dict(os.environ, **env)
    environ.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=environ)


def test_no_root_folder_is_a_package_named_like_an_installed_distribution():
    installed = {(d.metadata["Name"] or "").lower().replace("-", "_") for d in importlib.metadata.distributions()}
    installed |= {name.lower() for name in importlib.metadata.packages_distributions()}
    for entry in ROOT.iterdir():
        if entry.name.startswith(".") or entry.name in ("gradsurg", "tests"):
            continue
        is_package = entry.is_dir() and (entry / "__init__.py").exists()
        is_module = entry.suffix == ".py" and entry.name != "setup.py"
        if is_package or is_module:
            assert entry.stem.lower() not in installed, f"{entry.name} at the repository root shadows an installed distribution"
    assert not (ROOT / "kernels" / "__init__.py").exists(), "kernels/ must stay a source root, not a package"


@pytest.mark.parametrize("code", [
    "import gradsurg, gradsurg_kernels, gradsurg.engine.triton_backend; print(gradsurg_kernels.__file__)",
    "import transformers.integrations.hub_kernels",
    "from transformers import AutoModel",
    "from sentence_transformers import SentenceTransformer",
    "import gradsurg.train.trainer, gradsurg.integrations.sentence_transformers",
])
def test_imports_from_the_repository_root(code):
    mod = code.split()[1].split(".")[0].rstrip(",")
    if importlib.util.find_spec(mod) is None:
        pytest.skip(f"{mod} is not installed")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_huggingface_kernels_is_not_ours_from_the_root():
    if importlib.util.find_spec("kernels") is None:
        pytest.skip("Hugging Face's kernels distribution is not installed")
    proc = _run("import kernels, pathlib; print(pathlib.Path(kernels.__file__).resolve())")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not proc.stdout.strip().startswith(str(ROOT / "kernels")), proc.stdout


@pytest.mark.slow
def test_the_wheel_holds_gradsurg_and_gradsurg_kernels_only(tmp_path):
    """A built wheel: two import packages, no top-level ``kernels``, the kernels' modules inside."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("gradsurg-*.whl")
    import gradsurg

    assert wheel.name.startswith(f"gradsurg-{gradsurg.__version__}-"), wheel.name  # setup.py reads __init__.py
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"gradsurg", "gradsurg_kernels"}, tops
    for module in ("launch", "fused", "chunked", "tiles", "inspect"):
        assert f"gradsurg_kernels/{module}.py" in names
    for data in ("stsb-en-train.csv.gz", "stsb-en-dev.csv.gz", "README.md"):  # the main job's default data
        assert f"gradsurg/data/{data}" in names, data
    # installed from the wheel alone (no editable finder, no repository on the path), run from the root
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    code = ("import sys; sys.path.insert(1, %r); import gradsurg_kernels, gradsurg, transformers.integrations.hub_kernels;"
            "print(gradsurg_kernels.__file__); from gradsurg.train.data import read_sts_pairs, PACKAGED_DIR;"
            "print(len(read_sts_pairs('packaged:stsb-dev')), PACKAGED_DIR)" % str(target))
    proc = _run(code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(target) in proc.stdout
    assert proc.stdout.splitlines()[1] == f"1500 {target / 'gradsurg' / 'data'}"  # read from the wheel's copy
