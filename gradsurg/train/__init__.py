"""Training and evaluation of sentence encoders with gradsurg's losses.

- :mod:`gradsurg.train.config`   -- :class:`TrainConfig`, presets ``quick`` / ``paper``
- :mod:`gradsurg.train.data`     -- training corpora and STS pair readers
- :mod:`gradsurg.train.models`   -- offline model loading, poolers, :class:`Encoder`
- :mod:`gradsurg.train.losses`   -- the loss of a config, through ``gradsurg.registry``
- :mod:`gradsurg.train.trainer`  -- the SimCSE-style unsupervised trainer
- :mod:`gradsurg.train.sts`      -- STS Spearman/Pearson of an encoder on a set of pairs
- :mod:`gradsurg.train.suite`    -- the seven STS tasks from one folder
- :mod:`gradsurg.train.evaluate` -- ``gradsurg evaluate`` (one file, or the seven tasks)
- :mod:`gradsurg.train.steplog`  -- per-step statistics to CSV / TensorBoard
- :mod:`gradsurg.train.grid`     -- ablation grids: expansion, run keys, training every run
- :mod:`gradsurg.train.store`    -- the results store of a grid (``results.jsonl``) and its reader
- :mod:`gradsurg.train.report`   -- summary over seeds, the Markdown table, the plots
- :mod:`gradsurg.train.ablate`   -- the command line ``gradsurg ablate``

Heavy imports (transformers) happen only when a model is loaded.
"""
from .config import ConfigError, TrainConfig, preset, preset_names
from .data import Corpus, STSPairs, read_corpus, read_sts_pairs
from .sts import evaluate_sts, pearson, spearman

__all__ = [
    "ConfigError", "TrainConfig", "preset", "preset_names",
    "Corpus", "STSPairs", "read_corpus", "read_sts_pairs",
    "evaluate_sts", "pearson", "spearman",
    "load_encoder", "Encoder", "Trainer", "train",
]


def __getattr__(name):  # lazy: keep `import gradsurg.train` free of transformers
    if name in ("load_encoder", "Encoder"):
        from . import models

        return getattr(models, name)
    if name in ("Trainer", "train"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
