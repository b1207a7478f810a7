"""torch.compile(fullgraph=True) of a training step through every drop-in loss: no graph
break, and the eager numbers.

Most cases use the ``aot_eager`` backend (Dynamo + AOTAutograd, the parts that
see gradsurg: fast to compile); one case runs the default Inductor backend.
Tolerance: loss and parameter gradients within 1e-6 relative of eager (both
run the same operator; Inductor may fuse the encoder's float32 arithmetic
differently).
"""
from __future__ import annotations

import pytest
import torch

import gradsurg

from conftest import rel_err

TOL = 1e-6


def encoder():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 24))


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 16, generator=g)
    return x, x + 0.3 * torch.randn(12, 16, generator=g), torch.randn(5, 16, generator=g)


def compare(step, enc, backend="aot_eager", grad_tol=TOL):
    torch._dynamo.reset()
    x, y, z = data()
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    enc.zero_grad()
    loss_c = compiled(x, y, z)
    loss_c.backward()
    grads_c = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    loss_e = step(x, y, z)
    loss_e.backward()
    assert rel_err(loss_c, loss_e) <= TOL
    for a, p in zip(grads_c, enc.parameters()):
        assert rel_err(a, p.grad) <= grad_tol


CASES = [(name, {}) for name in ["info_nce", "arccon", "mpt", "met", "mat"]] + [
    ("info_nce", {"symmetric": True}), ("met", {"symmetric": True}),
    ("arccon", {"reduction": "none"}), ("mpt", {"reduction": "none"}), ("mat", {"reduction": "sum"})]


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{'-'.join(map(str, k.values())) or 'mean'}" for n, k in CASES])
def test_presets_compile_fullgraph(name, kw):
    enc = encoder()
    fn = getattr(gradsurg, name)

    def step(x, y, z):
        loss = fn(enc(x), enc(y), enc(z), **kw)
        return loss.sum() if loss.dim() else loss

    compare(step, enc)


def test_paradigm_loss_module_and_options_compile():
    enc = encoder()
    p = gradsurg.Paradigm(gradsurg.dissipation.Margin(0.3), gradsurg.weight.Power(3.0), gradsurg.ratio.Constant(1.5))
    loss_mod = gradsurg.ParadigmLoss(p, reduction="sum")

    def step(x, y, z):
        return loss_mod(enc(x), enc(y), enc(z)) + gradsurg.info_nce(enc(x), enc(y), chunk_bytes=2048)

    compare(step, enc)


def test_inductor_training_step():
    enc = encoder()

    def step(x, y, z):
        return gradsurg.info_nce(enc(x), enc(y), enc(z), symmetric=True)

    compare(step, enc, backend="inductor")


def test_finiteness_check_inside_the_compiled_step():
    enc = encoder()
    compiled = torch.compile(lambda x, y: gradsurg.info_nce(enc(x), enc(y)), fullgraph=True, backend="aot_eager")
    x, y, _ = data()
    x[2, 3] = float("nan")
    with pytest.raises(ValueError, match="anchors contains NaN"):
        compiled(x, y)


def test_autocast_step_compiles():
    """CPU bfloat16 autocast inside the compiled step: the loss of eager autocast; the parameter
    gradients to bfloat16 precision (1e-2): eager autocast sums the three uses' weight
    gradients in bfloat16 (one cached cast), the compiled graph in float32."""
    torch.manual_seed(0)
    enc = torch.nn.Linear(16, 24)

    def step(x, y, z):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return gradsurg.mpt(enc(x), enc(y), enc(z), symmetric=True)

    compare(step, enc, grad_tol=1e-2)
