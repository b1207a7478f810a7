"""Errors name the function the user called: ``gradsurg.info_nce`` says ``info_nce:``, a module its
class name, ``paradigm_loss`` itself ``paradigm_loss:`` (one mechanism: the front door's ``caller``)."""
from __future__ import annotations

import pytest
import torch

import gradsurg
from gradsurg import paradigm

FUNCTIONS = ("info_nce", "arccon", "mpt", "met", "mat", "siglip")
MODULES = ("InfoNCELoss", "ArcConLoss", "MPTLoss", "METLoss", "MATLoss", "SigLIPLoss")


def _x(n=4, d=8):
    torch.manual_seed(0)
    return torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)


BAD = {  # what goes wrong -> (keyword arguments or inputs, the error type, a piece of the message)
    "rank": (lambda x, y: ((x[0], y), {}), ValueError, "anchors must be 2-D"),
    "shape": (lambda x, y: ((x, y[:2]), {}), ValueError, "positives must have the shape of anchors"),
    "dtype": (lambda x, y: ((x, y.float()), {}), ValueError, "dtype"),
    "finite": (lambda x, y: ((x * float("nan"), y), {}), ValueError, "NaN or infinite"),
    "reduction": (lambda x, y: ((x, y), {"reduction": "avg"}), ValueError, "reduction must be one of"),
    "backend": (lambda x, y: ((x, y), {"backend": "cuda"}), ValueError, "backend must be one of"),
    "option": (lambda x, y: ((x, y), {"block_size": 4}), ValueError, "does not accept option(s) block_size"),
    "symmetric": (lambda x, y: ((x, y), {"symmetric": 1}), TypeError, "symmetric must be a bool"),
    "group": (lambda x, y: ((x, y), {"group": object()}), ValueError, "group= is only used"),
}


@pytest.mark.parametrize("what", sorted(BAD))
@pytest.mark.parametrize("name", FUNCTIONS)
def test_functional_losses_name_themselves(name, what):
    make, kind, piece = BAD[what]
    args, kwargs = make(*_x())
    with pytest.raises(kind) as err:
        getattr(gradsurg, name)(*args, **kwargs)
    msg = str(err.value)
    assert msg.startswith(f"{name}: ") and piece in msg and "paradigm_loss" not in msg, msg


@pytest.mark.parametrize("name", MODULES)
def test_modules_name_their_class(name):
    x, y = _x()
    with pytest.raises(ValueError, match=rf"^{name}: anchors must be 2-D"):
        getattr(gradsurg, name)()(x[0], y)
    with pytest.raises(ValueError, match=rf"^{name}: anchors contains NaN"):
        getattr(gradsurg, name)()(x * float("nan"), y)


def test_the_front_door_names_itself_and_takes_a_wrapper_name():
    x, y = _x()
    with pytest.raises(ValueError, match=r"^paradigm_loss: reduction must be one of"):
        gradsurg.paradigm_loss(x, y, paradigm=paradigm.info_nce(), reduction="avg")
    with pytest.raises(ValueError, match=r"^my_loss: anchors contains NaN"):
        gradsurg.paradigm_loss(x * float("nan"), y, paradigm=paradigm.info_nce(), caller="my_loss")
    with pytest.raises(TypeError, match=r"^paradigm_loss: caller must be a non-empty str"):
        gradsurg.paradigm_loss(x, y, paradigm=paradigm.info_nce(), caller=3)
    # the caller name changes no number
    torch.testing.assert_close(gradsurg.paradigm_loss(x, y, paradigm=paradigm.info_nce(), caller="w"),
                               gradsurg.info_nce(x, y), rtol=0, atol=0)


def test_the_name_survives_torch_compile():
    x, y = _x()
    compiled = torch.compile(lambda a, b: gradsurg.info_nce(a, b), backend="eager", fullgraph=False)
    with pytest.raises(Exception, match=r"info_nce: anchors contains NaN"):
        compiled(x * float("nan"), y)


# -- inside the op: the learnable values and the backend's own option checks (check_finite=False too) -------

T = torch.float64
INSIDE = {  # what goes wrong inside the op -> (call with the name, the message after "<name>: ")
    "temperature": (lambda f, x, y: f(x, y, temperature=torch.tensor(-1.0, dtype=T), check_finite=False),
                    "the learnable temperature must be finite and > 0"),
    "scale": (lambda f, x, y: f(x, y, scale=torch.tensor(0.0, dtype=T), bias=-1.0, check_finite=False),
              "the learnable scale must be finite and > 0"),
    "bias": (lambda f, x, y: f(x, y, scale=5.0, bias=torch.tensor(float("inf"), dtype=T), check_finite=False),
             "the learnable bias must be finite"),
    "normalize": (lambda f, x, y: f(x, y, normalize="no", check_finite=False), "normalize must be a bool"),
    "chunk_bytes": (lambda f, x, y: f(x, y, chunk_bytes=0), "chunk_bytes must be a positive int"),
}
NAMED = {"temperature": ("info_nce", "arccon"), "scale": ("siglip",), "bias": ("siglip",),
         "normalize": FUNCTIONS, "chunk_bytes": FUNCTIONS}


@pytest.mark.parametrize("what,name", [(w, n) for w in INSIDE for n in NAMED[w]])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_errors_inside_the_op_name_the_caller(what, name, reduction):
    make, piece = INSIDE[what]
    fn = getattr(gradsurg, name)
    with pytest.raises(ValueError, match=rf"^{name}: {piece}"):
        make(lambda *a, **kw: fn(*a, reduction=reduction, **kw), *_x())


def test_errors_inside_the_op_name_a_module_and_a_wrapper():
    x, y = _x()
    module = gradsurg.InfoNCELoss(temperature=torch.tensor(-0.5, dtype=T), check_finite=False)
    with pytest.raises(ValueError, match=r"^InfoNCELoss: the learnable temperature must be finite and > 0"):
        module(x, y)
    with pytest.raises(ValueError, match=r"^my_loss: the learnable temperature must be finite and > 0"):
        gradsurg.paradigm_loss(x, y, paradigm=paradigm.info_nce(), learn={"temperature": torch.tensor(-1.0, dtype=T)},
                               check_finite=False, caller="my_loss")
    with pytest.raises(ValueError, match=r"^my_loss: normalize must be a bool"):
        gradsurg.paradigm_loss(x, y, paradigm=paradigm.mpt(), normalize=1, caller="my_loss")
    with pytest.raises(ValueError, match=r"^paradigm_loss: chunk_bytes must be a positive int"):
        gradsurg.paradigm_loss(x, y, paradigm=paradigm.info_nce(), chunk_bytes=-4)


def test_the_triton_backend_names_the_caller():
    from gradsurg.engine.dispatch import triton_problem

    if triton_problem():
        pytest.skip(triton_problem())
    x, y = (t.float() for t in _x())
    with pytest.raises(ValueError, match=r"^siglip: the triton backend's path must be"):
        gradsurg.siglip(x, y, backend="triton", path="both")


def test_errors_inside_the_op_name_the_caller_under_torch_compile():
    x, y = _x()
    tau = torch.tensor(-1.0, dtype=T)
    compiled = torch.compile(lambda a, b, t: gradsurg.info_nce(a, b, temperature=t, check_finite=False),
                             backend="eager", fullgraph=False)
    with pytest.raises(Exception, match=r"info_nce: the learnable temperature must be finite and > 0"):
        compiled(x, y, tau)
    compiled = torch.compile(lambda a, b: gradsurg.mpt(a, b, normalize="no", check_finite=False), backend="eager",
                             fullgraph=False)
    with pytest.raises(Exception, match=r"mpt: normalize must be a bool"):
        compiled(x, y)
