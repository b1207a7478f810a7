"""gradsurg/losses.py: the drop-in functions and their nn.Module wrappers take the same arguments."""
from __future__ import annotations

import pytest
import torch

import gradsurg

from conftest import batch


def test_modules_match_functions():
    leaves = batch(6, 2, 4)
    for mod, fn in [(gradsurg.InfoNCELoss(temperature=0.1), lambda *t: gradsurg.info_nce(*t, temperature=0.1)),
                    (gradsurg.MATLoss(margin=0.3, symmetric=True),
                     lambda *t: gradsurg.mat(*t, margin=0.3, symmetric=True))]:
        assert torch.equal(mod(*leaves), fn(*leaves))
    assert "Softmax" in repr(gradsurg.InfoNCELoss())


def test_modules_pass_gather_options_through():
    # without a process group the gathered loss is the ordinary one (docs/distributed.md)
    leaves = batch(6, 2, 4)
    gathered = gradsurg.InfoNCELoss(gather_across_devices=True)
    assert gathered.kwargs["gather_across_devices"] is True
    assert torch.equal(gathered(*leaves), gradsurg.info_nce(*leaves))
    with pytest.raises(ValueError, match="group= is only used with gather_across_devices"):
        gradsurg.InfoNCELoss(group=object())
