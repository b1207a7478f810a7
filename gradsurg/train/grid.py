"""An ablation grid: the runs of losses x modifications x loss parameters x seeds, and training them.

- :func:`expand_grid` -- the configs of a grid (a set: each run once, by :func:`run_key`)
- :func:`run_key`     -- a run's identity: a hash of the config fields that change its result
- :func:`with_untrained` -- the grid with its ``untrained`` rows first (the encoder before training)
- :func:`run_grid`    -- train every run not yet in ``OUT/results.jsonl`` (the store of
  :mod:`gradsurg.train.store`: resumable, one writer per folder), rewriting ``OUT/results.csv``

The table and plots of the results are :mod:`gradsurg.train.report`'s; the command
line (``gradsurg ablate``) is :mod:`gradsurg.train.ablate`'s.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from typing import Any, Iterable

from ..registry import accepts
from .config import ConfigError, TrainConfig, parse_modified
from .data import PACKAGED_WAS
from .report import flag, write_csv
from .store import UNTRAINED, ResultsStore

#: config fields that do not change what a run computes (left out of its identity)
_NOT_IDENTITY = {"output_dir", "progress", "tensorboard", "save_best", "device", "eval_batch_size", "log_every"}
#: fields added to TrainConfig after results files existed: left out of a run's identity while at
#: these values, so older results.jsonl files stay resumable (add every new field here)
_ADDED_LATER = {"mini_batch_size": None, "form": None, "patience": None, "suite_data": None,
                "mask_duplicates": False, "precision": "fp32", "compile": False, "label_column": None}


def run_key(config: TrainConfig) -> str:
    """A stable identity of a run: a hash of every config field that affects its result."""
    data = {k: PACKAGED_WAS.get(v, v) if k in ("train_data", "eval_data") else v
            for k, v in config.to_dict().items()
            if k not in _NOT_IDENTITY and not (k in _ADDED_LATER and v == _ADDED_LATER[k])}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def accepts_modified(loss: str) -> bool:
    """Whether the registry's ``loss`` takes a ``modified`` parameter (the non-contrastive objectives)."""
    return accepts(loss, "modified")


def accepts_form(loss: str) -> bool:
    """Whether the registry's ``loss`` takes a ``form`` parameter (non-contrastive objectives, sg)."""
    return accepts(loss, "form")

def expand_grid(
    base: TrainConfig,
    losses: Iterable[str] | None = None,
    modified: Iterable[str] | None = None,
    params: dict[str, list[Any]] | None = None,
    seeds: Iterable[int] | None = None,
) -> list[TrainConfig]:
    """All configs of the grid, in order loss -> modified -> parameters -> seed.

    A grid is a set: a value repeated on an axis, or two combinations that
    describe the same run (the same :func:`run_key`), give one run.
    ``modified`` values ("none", "w_gd,w_w,w_r", ...) are applied only to losses
    that accept ``modified``; a parameter a loss does not take raises
    :class:`ConfigError` naming it (checked by building the loss once).
    """
    from .losses import loss_from_fields

    losses = list(losses or [base.loss])
    mods = list(modified) if modified else [base.modified or "none"]
    params = params or {}
    seeds = list(seeds) if seeds else [base.seed]
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seeds must be integers, got {seed!r}")
    keys = sorted(params)
    configs: list[TrainConfig] = []
    for loss in losses:
        takes_mod = any(parse_modified(m) for m in mods) and accepts_modified(loss)
        # ``form`` applies to the losses that have one (the non-contrastive objectives and sg)
        form = base.form if base.form and accepts_form(loss) else None
        loss_mods = mods if takes_mod else ["none"]
        for norm in dict.fromkeys(",".join(parse_modified(m)) or None for m in loss_mods):  # each once
            for values in itertools.product(*(params[k] for k in keys)) if keys else [()]:
                loss_params = dict(base.loss_params)
                loss_params.update(dict(zip(keys, values)))
                loss_from_fields(loss, loss_params, norm, form)  # fail fast, naming the bad parameter
                for seed in seeds:
                    configs.append(base.replace(loss=loss, modified=norm, form=form, loss_params=loss_params,
                                                seed=int(seed)))
    return unique_runs(configs)


def unique_runs(configs: Iterable[TrainConfig]) -> list[TrainConfig]:
    """``configs`` without repeats of a run (the same :func:`run_key`), in first-seen order."""
    unique: dict[str, TrainConfig] = {}
    for cfg in configs:
        unique.setdefault(run_key(cfg), cfg)
    return list(unique.values())


def repeated(name: str, values: Iterable[Any]) -> str | None:
    """A note when ``values`` (one grid axis) lists a value more than once, else None."""
    values = list(values)
    seen: dict[str, int] = {}
    for v in values:
        seen[json.dumps(v, default=str)] = seen.get(json.dumps(v, default=str), 0) + 1
    twice = [f"{k} ({n} times)" for k, n in seen.items() if n > 1]
    if not twice:
        return None
    return f"note: {name} repeats {', '.join(twice)}; a grid is a set, each run is trained and counted once"


def untrained_config(config: TrainConfig) -> TrainConfig:
    """The ``untrained`` run of ``config``: the same encoder, pooler, data, evaluation and seed,
    no loss (its row is the encoder before training, scored as the trained runs are); the options of
    the loss's training (``mask_duplicates``, ``label_column``: the encoder before training reads
    no labels) are dropped with it."""
    return config.replace(loss=UNTRAINED, loss_params={}, modified=None, form=None, mask_duplicates=False,
                          label_column=None)


def with_untrained(configs: Iterable[TrainConfig]) -> list[TrainConfig]:
    """``configs`` after their ``untrained`` runs (one per distinct base and seed; none for a
    config without dev data): the grid's first rows, stored and resumed like any run."""
    configs = list(configs)
    return unique_runs([untrained_config(c) for c in configs if c.eval_data is not None] + configs)


def run_grid(configs: list[TrainConfig], out_dir: str, resume: bool = True, retry_failed: bool = False,
             progress: bool = True, stream=None, wait: float = 0.0) -> list[dict]:
    """Train every config not yet in ``out_dir/results.jsonl``; return all rows for this grid.

    The folder is locked for the whole grid (:class:`~gradsurg.train.store.StoreBusy`
    if another process holds it, after ``wait`` seconds); lines of the results
    file that are not usable rows are set aside first, with a message. A run's
    folder ``runs/<run>-<key>`` is emptied before the run is (re)trained. An
    ``untrained`` config (:func:`with_untrained`) is scored, not trained. Runs
    recorded as failed are skipped unless ``retry_failed`` (a message says so).
    Ctrl-C (``KeyboardInterrupt``) propagates after the finished runs are stored.
    """
    import shutil

    from .trainer import score_untrained, train

    stream = sys.stderr if stream is None else stream
    configs = unique_runs(configs)
    store = ResultsStore(out_dir)
    with store.lock(wait):
        if not resume and os.path.exists(store.path):
            backup = store.path + f".{time.strftime('%Y%m%d-%H%M%S')}.bak"
            os.replace(store.path, backup)
            print(f"--no-resume: the old results are kept in {backup}", file=stream)
        done = store.load()
        if store.problems or store.superseded:
            notes = store.check()
            store.repair()
            print(f"{store.path}: {len(notes)} line(s) were not usable rows; set aside in "
                  f"{store.set_aside_path}:", file=stream)
            for note in notes:
                print(f"  {note}", file=stream)
        keys = [run_key(c) for c in configs]
        todo = [(k, c) for k, c in zip(keys, configs)
                if k not in done or (retry_failed and done[k].get("status") != "ok")]
        if len(todo) < len(configs):
            print(f"resuming: {len(configs) - len(todo)} of {len(configs)} runs already in {store.path}",
                  file=stream)
        failed = 0 if retry_failed else sum(k in done and done[k].get("status") != "ok" for k in keys)
        if failed:
            print(f"{failed} of them failed and are skipped (flagged in the table); rerun with --retry-failed "
                  f"to train them again", file=stream)
        takes_mod: dict[str, bool] = {}
        outer = None
        if progress:
            from tqdm.auto import tqdm

            outer = tqdm(total=len(todo), desc="ablation", unit="run", position=0)
        try:
            for key, cfg in todo:
                if cfg.loss not in takes_mod:
                    takes_mod[cfg.loss] = cfg.loss != UNTRAINED and accepts_modified(cfg.loss)
                run_dir = os.path.join(out_dir, "runs", f"{cfg.run_name()}-{key}")
                if os.path.isdir(run_dir):  # a rerun: no file of the old attempt survives
                    shutil.rmtree(run_dir)
                run_cfg = cfg.replace(output_dir=run_dir, progress=progress)
                row: dict[str, Any] = {"key": key, "takes_modified": takes_mod[cfg.loss]}
                started = time.time()
                try:
                    result = score_untrained(run_cfg) if cfg.loss == UNTRAINED else train(run_cfg)
                    row.update(result.to_dict())
                    row["status"] = "ok"
                except (FloatingPointError, RuntimeError, ValueError) as exc:  # a failing run must not stop the grid
                    row.update({"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                "train_seconds": round(time.time() - started, 2)})
                row["config"] = cfg.to_dict()
                row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                store.add(row)
                done = store.rows
                write_csv([done[k] for k in keys if k in done], os.path.join(out_dir, "results.csv"))
                if outer is not None:
                    outer.update(1)
                note = flag(row)
                msg = (f"{cfg.run_name()}: spearman {row['spearman']:.2f} (best dev subset "
                       f"{row.get('best_dev') or float('nan'):.2f} at step {row.get('best_step')})"
                       if note is None else f"{cfg.run_name()}: {note}")
                (outer.write if outer is not None else print)(msg)
        finally:
            if outer is not None:
                outer.close()
        return [done[k] for k in keys if k in done]
