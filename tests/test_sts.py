"""gradsurg/train/sts.py: STS scoring of an encoder on a set of pairs."""
from __future__ import annotations

import pytest
import torch

from gradsurg.train import ConfigError
from gradsurg.train.data import read_sts_pairs



def test_evaluate_sts_and_encode_reject_a_bad_batch_size(tiny):
    from gradsurg.train.sts import evaluate_sts
    from gradsurg.train.models import load_encoder

    enc = load_encoder(tiny["model"], pooler="avg")
    pairs = read_sts_pairs(tiny["sts"])
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate_sts(enc, pairs, batch_size=-1)
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(["a b"], batch_size=0)


def test_constant_similarities_are_undefined_not_zero():
    from gradsurg.train.data import STSPairs
    from gradsurg.train.sts import evaluate_sts

    class Flat:
        def encode(self, texts, **kw):
            return torch.ones(len(texts), 4)

    result = evaluate_sts(Flat(), STSPairs(["a", "b", "c"], ["d", "e", "f"], [1.0, 2.0, 3.0]))
    assert result["spearman"] != result["spearman"]  # NaN: documented as undefined
