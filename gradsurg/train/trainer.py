"""Unsupervised SimCSE-style training with any gradsurg loss.

One step: a batch of N sentences is embedded twice in one forward pass in
train mode, so dropout gives two views; the first N embeddings are the
anchors, the second N the positives, and (when the corpus has a hard negative
column) N more embeddings of the hard negatives are the extra candidates. The
loss module gets the RAW embeddings ``loss(anchors, positives, negatives)``; with
a label column (config ``label_column``, loss ``info_nce``) it also gets
``labels=``, the batch's corpus labels: every positive whose label equals the
anchor's is a target (supervised-contrastive, several positives per anchor).
AdamW with a linear decay (optional warmup), as SimCSE.

Every ``eval_every`` steps the encoder is scored on the dev pairs (Spearman of
cosine) and the best state is kept (in memory, and on disk under
``output_dir/best`` when ``save_best``); at the end the best state is restored
and, if only a subset of the dev pairs was used for selection, scored on all
of them. With ``eval_at_start`` the untrained encoder is scored too (step 0, logged, never selected);
:func:`score_untrained` scores it alone, as the trained runs are (an ablation grid's first row).

``Trainer.train`` is the loop: :meth:`Trainer.train_step` (forward, loss,
backward, optimiser step), :meth:`Trainer.evaluate_and_checkpoint` every
``eval_every`` steps, :meth:`Trainer.finish` at the end.

Mixed precision (config ``precision``, :mod:`gradsurg.train.precision`): the
encoder forward and the loss run under ``torch.autocast`` (bf16 or fp16), the
backward, the optimiser and evaluation outside it in float32; fp16 scales the
loss with a ``torch.amp.GradScaler``, unscales before clipping and skips
(and counts) the steps whose gradients overflowed. ``compile`` compiles the
encoder's transformer with ``torch.compile``.

    from gradsurg.train import TrainConfig, train
    result = train(TrainConfig(loss="vicreg", modified="w_gd,w_w,w_r", seed=1))
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .config import ConfigError, TrainConfig
from .data import Corpus, STSPairs, check_pairs, read_corpus, read_sts_pairs
from .sts import evaluate_sts
from .losses import loss_from_config, uses_index
from .precision import autocast, check_compile, check_precision, compile_encoder, make_scaler
from .steplog import StepLogger, make_collector

#: precision fp16: this many skipped (overflowing) steps in a row stop the run: halving the loss
#: scale that often (from 2^16 to 2^-9) no longer explains the inf/NaN gradient
MAX_SKIPPED_IN_A_ROW = 25

#: a run is flagged ``collapsed`` when its last dev Spearman (x100) falls this far below its first
COLLAPSE_DROP = 20.0


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@dataclass
class TrainResult:
    """What a run produced (``to_dict`` is what the ablation writes to its JSONL)."""

    config: dict
    steps: int = 0
    best_step: int | None = None
    best_dev: float | None = None
    initial_dev: float | None = None
    spearman: float | None = None
    pearson: float | None = None
    n_pairs: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    train_seconds: float = 0.0
    losses: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    saved_to: str | None = None
    final_stats: dict = field(default_factory=dict)
    #: the last dev score fell at least COLLAPSE_DROP below the first (see ``collapse_note``)
    collapsed: bool = False
    collapse_note: str | None = None
    #: why training ended before max_steps ("patience" when the dev score stopped improving)
    stopped_early: str | None = None
    #: the seven-task table of the best checkpoint (config ``suite_data``; gradsurg.train.suite)
    suite: dict | None = None
    #: precision fp16: steps whose scaled gradients overflowed (inf/NaN), skipped by the gradient
    #: scaler (weights and learning-rate schedule unchanged), and the loss scale at the end
    skipped_steps: int = 0
    loss_scale: float | None = None

    def to_dict(self, with_curves: bool = False) -> dict:
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items()}
        if not with_curves:
            out.pop("losses")
        return out


class Trainer:
    """Trains an :class:`~gradsurg.train.models.Encoder` per a :class:`TrainConfig`.

    Everything can be injected (for tests and integrations): ``encoder``,
    ``loss`` (any module ``(anchors, positives, negatives) -> scalar``),
    ``corpus`` and ``eval_pairs``; what is not given is built from the config.
    The config is validated and the loss, corpus and dev data are resolved
    before the model is loaded, so bad configs fail in milliseconds.
    """

    def __init__(
        self,
        config: TrainConfig,
        encoder=None,
        loss: torch.nn.Module | None = None,
        corpus: Corpus | None = None,
        eval_pairs: STSPairs | None = None,
        on_eval: Callable[[int, dict], None] | None = None,
    ):
        self.config = config.validate()
        cfg = self.config
        if loss is None:  # checked before the corpus is read (fast failure on a bad loss field)
            loss_from_config(cfg)
        if corpus is None:
            if cfg.train_data is None:
                raise ConfigError("config field 'train_data' is not set (a text/CSV/JSONL corpus path)")
            corpus = read_corpus(cfg.train_data, cfg.train_format, cfg.text_column,
                                 cfg.hard_negative_column, cfg.max_train_sentences, cfg.label_column)
        self.corpus = corpus
        if len(corpus) < 2:
            raise ConfigError("the training corpus needs at least 2 sentences")
        if corpus.labels is not None:  # an injected corpus: the config's checks did not see it
            if len(corpus.labels) != len(corpus):
                raise ConfigError(f"the training corpus has {len(corpus.labels)} labels for {len(corpus)} sentences")
            if loss is None and cfg.loss != "info_nce":
                raise ConfigError(f"the training corpus has labels, which loss 'info_nce' takes (labels=), "
                                  f"not config field 'loss' {cfg.loss!r}")
        # built once the corpus is known: normalizer='global' keeps one estimate per corpus sentence
        self.loss = loss if loss is not None else loss_from_config(cfg, dataset_size=len(corpus))
        #: the loss keeps per-example state (global normaliser): each call gets the batch's corpus indices
        self.loss_uses_index = uses_index(self.loss)
        if eval_pairs is None and cfg.eval_data is not None:
            eval_pairs = read_sts_pairs(cfg.eval_data, cfg.eval_format, cfg.eval_split)
        if cfg.suite_data:  # checked before the model is loaded
            from .suite import find_tasks

            find_tasks(cfg.suite_data)
        self.eval_full = eval_pairs
        self.eval_pairs = eval_pairs.subset(cfg.eval_max_pairs) if eval_pairs is not None else None
        if self.eval_pairs is not None:  # a subset with equal gold scores fails here, not after training
            check_pairs(self.eval_pairs, f"the dev pairs {self.eval_pairs.name!r}")
        self.on_eval = on_eval
        from .models import load_encoder, pick_device

        try:
            self.device = pick_device(cfg.device)
        except ValueError as exc:
            raise ConfigError(f"config field 'device': {exc}") from None
        check_precision(cfg.precision, self.device)  # before the model is loaded
        if cfg.compile:
            check_compile(self.device)
        set_seed(cfg.seed)
        if encoder is None:
            encoder = load_encoder(cfg.model, pooler=cfg.pooler, max_len=cfg.max_len,
                                   mlp_only_train=cfg.mlp_only_train, what="config field 'model'")
        self.encoder = encoder.to(self.device)
        if cfg.compile:
            compile_encoder(self.encoder)
        self.loss = self.loss.to(self.device)

    def autocast(self):
        """The autocast region of the encoder forward and the loss (config ``precision``; a no-op
        for fp32). Evaluation runs outside it, in float32."""
        return autocast(self.config.precision, self.device)

    # ----------------------------------------------------------------- steps
    def _batches(self, generator: torch.Generator):
        n, bs = len(self.corpus), min(self.config.batch_size, len(self.corpus))
        while True:  # epochs
            order = torch.randperm(n, generator=generator).tolist()
            full = n - n % bs if n >= bs else n
            for start in range(0, full, bs):
                yield order[start : start + bs]

    def total_steps(self) -> int:
        cfg = self.config
        bs = min(cfg.batch_size, len(self.corpus))
        per_epoch = max(len(self.corpus) // bs, 1)
        steps = per_epoch * cfg.epochs
        return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps

    def text_columns(self, idx: list[int]) -> list[list[str]]:
        """The texts of a batch by column: anchors, positives (the same sentences: dropout views)
        and, when the corpus has them, hard negatives."""
        texts = [self.corpus.sentences[i] for i in idx]
        columns = [texts, texts]
        if self.corpus.hard_negatives is not None:
            columns.append([self.corpus.hard_negatives[i] for i in idx])
        return columns

    def step_embeddings(self, idx: list[int], columns: list[list[str]] | None = None):
        """Anchors, positives (dropout views of the same sentences) and hard negatives of a batch,
        in one encoder forward (``columns``: :meth:`text_columns` of ``idx``, when at hand)."""
        columns = self.text_columns(idx) if columns is None else columns
        n = len(idx)
        emb = self.encoder([text for column in columns for text in column])
        negatives = emb[2 * n :] if len(columns) > 2 else None
        return emb[:n], emb[n : 2 * n], negatives

    def _duplicate_keys(self, columns: list[list[str]]):
        """``mask_duplicates``: integer keys of the texts of each column (equal texts, equal keys), else None."""
        if not self.config.mask_duplicates:
            return None
        from ..structured import texts_to_keys

        return [k.to(self.device) for k in texts_to_keys(*columns)]

    def _call_loss(self, anchors, positives, negatives=None, keys=None, stats=None, idx=None):
        """The loss of one batch; with duplicate keys the hard negatives go as a column (structured candidates).
        ``stats``: a dict that a loss on the structured path (sentence-transformers' options, masks) fills
        with the telemetry of the W it trains with (hardness-tilted, masked), from its own chunks; the
        global normaliser (``index=``) fills it with ``normalizer_ratio_*`` (g_i/u_i) and
        ``normalizer_first_seen``.
        ``idx``: the batch's corpus positions, passed as ``index=`` to a loss that keeps per-example
        state (:attr:`loss_uses_index`: the global normaliser's estimates u_i), and used to pass
        ``labels=`` (the batch's corpus labels, int64) when the corpus has labels (``label_column``)."""
        per_batch = {}
        if self.loss_uses_index:
            per_batch["index"] = torch.as_tensor(idx, dtype=torch.int64, device=anchors.device)
        if self.corpus.labels is not None:
            per_batch["labels"] = torch.as_tensor([self.corpus.labels[i] for i in idx], dtype=torch.int64,
                                                  device=anchors.device)
        if keys is not None:
            per_batch["keys"] = keys
            negatives = [] if negatives is None else [negatives]
        if stats is not None and (keys is not None or per_batch or getattr(self.loss, "structured", None)):
            per_batch["stats"] = stats
        return self.loss(anchors, positives, negatives, **per_batch)

    def cached_step(self, idx: list[int], scaler: "torch.amp.GradScaler | None" = None, stats=None):
        """A GradCache-style step (``mini_batch_size``): gradients accumulated, loss detached.

        The columns (anchors, positives[, hard negatives]) are embedded in chunks of
        ``mini_batch_size`` sentences; dropout masks therefore differ from the
        one-forward step of :meth:`step_embeddings`, as with any chunking. Each chunk's
        forward and the loss run under :meth:`autocast`; with a gradient ``scaler`` (fp16)
        the loss is scaled before its backward, so the accumulated gradients are scaled.
        """
        from ..cached import cached_step

        columns = self.text_columns(idx)
        keys = self._duplicate_keys(columns)
        loss, embs = cached_step(self._autocast_fn(self.encoder), columns,
                                 self._autocast_fn(lambda *e: _scalar(self._call_loss(*e, keys=keys, stats=stats,
                                                                                      idx=idx))),
                                 mini_batch_size=self.config.mini_batch_size, return_embeddings=True,
                                 scale_loss=scaler.scale if scaler is not None else None)
        return loss, embs[0], embs[1], (embs[2] if len(embs) > 2 else None)

    def _autocast_fn(self, fn: Callable) -> Callable:
        """``fn`` run inside :meth:`autocast` (the backward passes stay outside it)."""
        def wrapped(*args):
            with self.autocast():
                return fn(*args)

        return wrapped

    def evaluate(self, pairs: STSPairs | None = None) -> dict:
        pairs = pairs if pairs is not None else self.eval_pairs
        return evaluate_sts(self.encoder, pairs, batch_size=self.config.eval_batch_size)

    def evaluate_suite(self, folder: str) -> dict:
        """The seven STS tasks under ``folder`` (:mod:`gradsurg.train.suite`); when the folder has
        no STS-B file, the config's STS-B ``eval_data`` (stsb-csv) fills that column (labelled by
        its split)."""
        from .suite import evaluate_suite, find_tasks

        cfg = self.config
        found, _ = find_tasks(folder)
        stsb = None
        if "STS-B" not in found and cfg.eval_data and cfg.eval_format == "stsb-csv":
            stsb = cfg.eval_data
        return evaluate_suite(self.encoder, folder, stsb=stsb, batch_size=cfg.eval_batch_size)

    # ----------------------------------------------------------------- train
    def train(self) -> TrainResult:
        """Run the configured number of steps; return a :class:`TrainResult`.

        The loop: the untrained encoder scored first (``eval_at_start``), then per
        step one :meth:`train_step` (forward, loss, backward, optimiser step) and its
        log row, with :meth:`evaluate_and_checkpoint` every ``eval_every`` steps and
        at the last one (stopping early after ``patience`` evaluations without a new
        best); then :meth:`finish` restores the best state and scores it.
        """
        cfg = self.config
        run = self._start_run()
        start = time.time()
        try:
            if self.eval_pairs is not None and cfg.eval_at_start:
                self.evaluate_and_checkpoint(run, 0)
            self.encoder.train()
            for step in range(1, run.total + 1):
                value, embeddings = self.train_step(run, step, next(run.batches))
                self._record_step(run, step, value, embeddings)
                if self.eval_pairs is not None and (step % cfg.eval_every == 0 or step == run.total):
                    self.evaluate_and_checkpoint(run, step)
                    self.encoder.train()
                    if cfg.patience is not None and run.since_best >= cfg.patience and step < run.total:
                        run.result.stopped_early = "patience"
                        break
        finally:
            if run.bar is not None:
                run.bar.close()
            run.logger.close()
        run.result.train_seconds = round(time.time() - start, 2)
        return self.finish(run)

    def _start_run(self) -> "_Run":
        """The optimiser (AdamW), the learning-rate schedule, the logs and the batch stream of one run."""
        cfg = self.config
        total = self.total_steps()
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        # the loss's own parameters (a learned logit_scale / bias) take no weight decay, as in open_clip
        extra = [p for p in self.loss.parameters() if p.requires_grad and all(p is not q for q in params)]
        groups = [{"params": params}] + ([{"params": extra, "weight_decay": 0.0}] if extra else [])
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(total, cfg.warmup_steps))
        logger = StepLogger(cfg.output_dir, tensorboard=cfg.tensorboard)
        run = _Run(total=total, params=params, optimizer=optimizer, scheduler=scheduler, logger=logger,
                   collector=make_collector(self.loss), result=TrainResult(config=cfg.to_dict()),
                   batches=self._batches(torch.Generator().manual_seed(cfg.seed)),
                   scaler=make_scaler(cfg.precision, self.device))
        if cfg.output_dir:
            cfg.save(os.path.join(cfg.output_dir, "config.json"))
        if cfg.progress:
            from tqdm.auto import tqdm

            run.bar = tqdm(total=total, desc=cfg.run_name(), unit="step", leave=False, dynamic_ncols=True)
        return run

    def train_step(self, run: "_Run", step: int, idx: list[int]):
        """One optimisation step on the batch ``idx``: forward, loss, backward, optimiser step.

        The encoder forward and the loss run under :meth:`autocast` (config ``precision``),
        the backward outside it. Returns the loss value and the (anchors, positives,
        negatives) embeddings for the step's statistics. A non-finite loss or gradient
        stops the run with the step number before the weights change; with fp16's gradient
        scaler a non-finite gradient is an overflow of the scaled loss instead: the step is
        skipped (weights and schedule unchanged), counted in ``skipped_steps``, and the
        scale halves; :data:`MAX_SKIPPED_IN_A_ROW` skips in a row stop the run.
        """
        cfg = self.config
        scaler = run.scaler
        run.optimizer.zero_grad(set_to_none=True)
        run.loss_stats.clear()
        stats = run.loss_stats if step % cfg.log_every == 0 else None  # W telemetry on logged steps only
        if cfg.mini_batch_size:  # the gradients are accumulated chunk by chunk inside the cached step
            loss, anchors, positives, negatives = self.cached_step(idx, scaler, stats)
        else:
            with self.autocast():
                columns = self.text_columns(idx)
                anchors, positives, negatives = self.step_embeddings(idx, columns)
                keys = self._duplicate_keys(columns)
                loss = _scalar(self._call_loss(anchors, positives, negatives, keys=keys, stats=stats, idx=idx))
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss {cfg.loss!r} became {value} at step {step} (lr {cfg.lr})")
        if not cfg.mini_batch_size:
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(run.optimizer)  # clipping and the norm see the true gradients
        if cfg.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
        else:
            norm = _grad_norm(run.params)
        if scaler is None:
            if not bool(torch.isfinite(norm)):  # before the step: the weights stay as they were
                raise FloatingPointError(f"the gradient of loss {cfg.loss!r} became non-finite at step {step} "
                                         f"(loss {value}, lr {cfg.lr})")
            run.optimizer.step()
        else:
            scale = scaler.get_scale()
            scaler.step(run.optimizer)  # skipped when unscale_ found an inf/NaN in any parameter's gradient
            scaler.update()  # ... and then the scale halves: the sign of a skipped step
            run.result.loss_scale = scaler.get_scale()
            if run.result.loss_scale < scale:
                run.result.skipped_steps += 1
                run.skipped_in_a_row += 1
                if run.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    raise FloatingPointError(
                        f"the gradient of loss {cfg.loss!r} stayed non-finite for {run.skipped_in_a_row} steps in a "
                        f"row up to step {step} under fp16 loss scaling (scale now {scaler.get_scale():g}, was "
                        f"{scale:g}; loss {value}, lr {cfg.lr}): not an overflow of the scale; try precision=bf16 "
                        "or fp32")
                return value, (anchors, positives, negatives)  # the schedule waits for a step that was taken
            run.skipped_in_a_row = 0
        run.scheduler.step()
        return value, (anchors, positives, negatives)

    def _record_step(self, run: "_Run", step: int, value: float, embeddings) -> None:
        """The step's loss in the result, its statistics row every ``log_every`` steps, the progress bar."""
        result = run.result
        result.losses.append(value)
        if result.first_loss is None:
            result.first_loss = value
        result.last_loss = value
        if step % self.config.log_every == 0:
            row: dict[str, Any] = {"step": step, "loss": value, "lr": run.scheduler.get_last_lr()[0]}
            row.update(run.collector(*embeddings))
            row.update(run.loss_stats)  # the W the loss trained with, where it reports one (structured path)
            run.logger.log(row)
        if run.bar is not None:
            run.bar.update(1)
            run.bar.set_description_str(f"{self.config.run_name()} loss {value:.4f}")
        result.steps = step

    def evaluate_and_checkpoint(self, run: "_Run", step: int) -> dict:
        """Score the encoder on the dev pairs at ``step``; keep (and save) a new best.

        Step 0 is the untrained encoder: recorded as ``initial_dev``, never selected.
        An evaluation without a new best counts towards ``patience``.
        """
        metrics = self.evaluate()
        result = run.result
        result.evals.append({"step": step, "spearman": metrics["spearman"], "pearson": metrics["pearson"]})
        run.logger.log_eval(step, metrics)
        if step == 0:
            result.initial_dev = metrics["spearman"]
        elif result.best_dev is None or metrics["spearman"] > result.best_dev:
            run.since_best = 0
            self.checkpoint(run, step, metrics)
        else:
            run.since_best += 1
        if self.on_eval is not None:
            self.on_eval(step, metrics)
        if run.bar is not None:
            run.bar.set_postfix_str(f"dev {metrics['spearman']:.2f} (best {result.best_dev or float('nan'):.2f})")
        return metrics

    def checkpoint(self, run: "_Run", step: int, metrics: dict) -> None:
        """Keep the encoder's state as the run's best (in memory; on disk under
        ``output_dir/best`` with ``save_best``)."""
        cfg, result = self.config, run.result
        result.best_dev, result.best_step = metrics["spearman"], step
        run.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.encoder.state_dict().items()}
        if cfg.save_best and cfg.output_dir:
            result.saved_to = os.path.join(cfg.output_dir, "best")
            self.encoder.save(result.saved_to, {"loss": cfg.loss, "step": step, "dev_spearman": metrics["spearman"]})

    def finish(self, run: "_Run") -> TrainResult:
        """After the loop: the collapse flag, the final statistics, the best state restored and
        scored (all dev pairs, or ``final_eval_data``; the suite), ``result.json`` written."""
        cfg, result = self.config, run.result
        _check_collapse(result, cfg)
        tail = run.logger.rows[-10:]
        if tail:  # mean of the per-step statistics over the last (up to) 10 logged steps
            keys = [k for k in tail[0] if k not in ("step", "lr") and isinstance(tail[0][k], (int, float))]
            result.final_stats = {k: float(np.mean([r[k] for r in tail if k in r])) for k in keys}
        if run.best_state is not None:
            self.encoder.load_state_dict(run.best_state)
        self._final_scores(result)
        if cfg.suite_data:
            result.suite = self.evaluate_suite(cfg.suite_data)
        if cfg.output_dir:
            with open(os.path.join(cfg.output_dir, "result.json"), "w", encoding="utf-8") as fh:
                json.dump(result.to_dict(with_curves=True), fh, indent=2)
        return result

    def _final_pairs(self) -> STSPairs | None:
        """The pairs the selected state is scored on at the end (``final_eval_data``, or all the dev
        pairs when selection used a subset), or None: the selection's own score is the final one."""
        cfg = self.config
        if cfg.final_eval_data:
            return read_sts_pairs(cfg.final_eval_data, cfg.final_eval_format or cfg.eval_format, cfg.eval_split)
        if self.eval_full is not None and len(self.eval_full) > len(self.eval_pairs):
            return self.eval_full
        return None

    def _final_scores(self, result: TrainResult) -> None:
        """``spearman``/``pearson``/``n_pairs`` of the restored best state: scored again on all the dev
        pairs (or ``final_eval_data``) when selection used fewer, else the best evaluation's."""
        final_pairs = self._final_pairs()
        if final_pairs is not None:
            metrics = self.evaluate(final_pairs)
            result.spearman, result.pearson, result.n_pairs = metrics["spearman"], metrics["pearson"], metrics["n_pairs"]
        elif self.eval_pairs is not None and result.best_dev is not None:
            last = max((e for e in result.evals if e["step"] > 0), key=lambda e: e["spearman"])
            result.spearman, result.pearson, result.n_pairs = last["spearman"], last["pearson"], len(self.eval_pairs)

    def score_untrained(self) -> TrainResult:
        """The encoder before training, scored as a trained run's selected state is.

        The same dev pairs (a step-0 evaluation, recorded as ``initial_dev`` and
        ``best_dev`` at ``best_step`` 0), then the same final scores (all dev pairs or
        ``final_eval_data``; the suite with ``suite_data``); no step is taken and
        nothing is written. ``steps`` is 0 and ``train_seconds`` the scoring time.
        """
        cfg = self.config
        if self.eval_pairs is None:
            raise ConfigError("the untrained encoder is scored on the dev pairs: config field 'eval_data' is not set")
        result = TrainResult(config=cfg.to_dict())
        start = time.time()
        metrics = self.evaluate()
        result.evals.append({"step": 0, "spearman": metrics["spearman"], "pearson": metrics["pearson"]})
        result.initial_dev = result.best_dev = metrics["spearman"]
        result.best_step = 0
        final_pairs = self._final_pairs()
        if final_pairs is not None:
            metrics = self.evaluate(final_pairs)
        result.spearman, result.pearson = metrics["spearman"], metrics["pearson"]
        result.n_pairs = len(final_pairs if final_pairs is not None else self.eval_pairs)
        if cfg.suite_data:
            result.suite = self.evaluate_suite(cfg.suite_data)
        result.train_seconds = round(time.time() - start, 2)
        return result


@dataclass
class _Run:
    """The state of one :meth:`Trainer.train` call (optimiser, schedule, logs, best state)."""

    total: int
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: Any
    logger: StepLogger
    collector: Callable
    result: TrainResult
    batches: Any
    bar: Any = None
    best_state: dict | None = None
    #: evaluations in a row without a new best (for ``patience``)
    since_best: int = 0
    #: the gradient scaler of precision fp16 (None otherwise) and its skipped steps in a row
    scaler: Any = None
    skipped_in_a_row: int = 0
    #: W telemetry the loss itself reported for the current step (structured path; emptied every step)
    loss_stats: dict = field(default_factory=dict)


def _linear_schedule(total: int, warm: int) -> Callable[[int], float]:
    """The learning-rate factor of step ``step``: linear warmup over ``warm`` steps, then linear decay to 0."""

    def schedule(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(total - warm, 1))

    return schedule


def _check_collapse(result: TrainResult, cfg: TrainConfig) -> None:
    """Flag (and warn about) a run whose last dev score fell far below its first one.

    The first score is the untrained encoder's with ``eval_at_start``, else the
    first scheduled evaluation. The best checkpoint is still what the run reports;
    the flag says that training went wrong after (or before) it.
    """
    evals = [e for e in result.evals if e["spearman"] is not None]
    if len(evals) < 2 or not math.isfinite(evals[0]["spearman"]):
        return
    first, last = evals[0], evals[-1]
    if not math.isfinite(last["spearman"]) or last["spearman"] <= first["spearman"] - COLLAPSE_DROP:
        import warnings

        result.collapsed = True
        result.collapse_note = (f"dev Spearman {first['spearman']:.2f} at step {first['step']} -> "
                                f"{last['spearman']:.2f} at step {last['step']}")
        warnings.warn(f"gradsurg: run {cfg.run_name()} collapsed: {result.collapse_note} (lr {cfg.lr}); "
                      f"the best checkpoint is kept, but check the learning rate and the loss", stacklevel=3)


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together (0 when there is none)."""
    norms = [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def _scalar(loss: torch.Tensor) -> torch.Tensor:
    return loss.mean() if loss.dim() != 0 else loss


def score_untrained(config: TrainConfig, **kwargs) -> TrainResult:
    """The encoder of ``config`` before training, scored as its trained runs are
    (:meth:`Trainer.score_untrained`); the config's loss is not built (the
    ``untrained`` row of an ablation has none)."""
    kwargs.setdefault("loss", torch.nn.Identity())  # never called: no step is taken
    return Trainer(config, **kwargs).score_untrained()


def train(config: TrainConfig, **kwargs) -> TrainResult:
    """Build a :class:`Trainer` for ``config`` (extra keyword arguments are passed on) and run it."""
    return Trainer(config, **kwargs).train()
