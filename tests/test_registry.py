"""gradsurg/registry.py: losses by name, checked when they are built."""
from __future__ import annotations

import pytest

from gradsurg.registry import build_loss



@pytest.mark.parametrize("name, kwargs, match", [
    ("info_nce", {"temperature": 1e-39}, "temperature must be in"),
    ("paradigm", {"ratio": 1e39}, "value must be at most"),
    ("paradigm", {"dissipation": "constant", "gd_value": 1e39}, "value must be at most"),
    ("paradigm", {"weight": "power", "p": 1e39}, "p must be in"),
    ("paradigm", {"dissipation": "info_nce", "margin": 0.5, "p": 3}, "margin, p have no effect"),
    ("info_nce", {"reduction": "avg"}, "reduction must be one of"),
    ("info_nce", {"backend": "cuda"}, "backend must be one of"),
])
def test_build_loss_rejects_bad_parameters_at_build_time(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_loss(name, **kwargs)
