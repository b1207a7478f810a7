"""gradsurg/api.py: the front door's policies (paradigm_loss): value-only calls, the dtype of the result.
Arguments checks are in tests/test_validation.py, the presets' gradients in tests/test_paradigm_core.py."""
from __future__ import annotations

import torch

import gradsurg
from gradsurg import reference as ref

from conftest import batch, rel_err


def test_low_precision_inputs_return_their_dtype():
    for dtype in (torch.float16, torch.bfloat16):
        x, y = batch(8, 0, 16, dtype=dtype)
        loss = gradsurg.info_nce(x, y)
        loss.backward()
        assert loss.dtype == dtype and x.grad.dtype == dtype
        x64, y64 = (t.detach().double().requires_grad_() for t in (x, y))
        ref.info_nce(x64, y64).backward()
        assert rel_err(x.grad, x64.grad) <= 1e-2


def test_no_grad_inputs_give_value_only():
    x, y = (t.detach() for t in batch(5, 0, 4))
    loss = gradsurg.info_nce(x, y)
    assert not loss.requires_grad
    assert rel_err(loss, ref.info_nce(x, y)) <= 1e-12
