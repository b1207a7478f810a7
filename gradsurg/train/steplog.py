"""Per-step training statistics, written to CSV (and TensorBoard when installed).

Always logged (cheap, from the detached embeddings of the step):
``pos_cos`` (mean cosine of the two views), ``neg_cos`` (mean cosine of an
anchor to the other candidates), ``hardest_neg_cos`` (mean over anchors of
the largest negative cosine), ``alignment`` (mean ``|u_i - v_i|^2``) and
``uniformity`` (``log mean exp(-2 |u_i - u_j|^2)`` over anchor pairs).

The paradigm's GD / W / R statistics (share of anchors dissipated, mean GD,
weight of the hardest negative, mean R) come from
``gradsurg.analysis.collector.StatsCollector`` through :func:`make_collector`,
which returns the statistics above too; should the collector fail, only the
statistics above are logged.
"""
from __future__ import annotations

import csv
import os
from typing import Any

import torch
import torch.nn.functional as F

from ..analysis.collector import StatsCollector, embedding_statistics


@torch.no_grad()
def embedding_stats(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None) -> dict:
    """Cosine / alignment / uniformity statistics of one batch of raw embeddings
    (the formulas of :func:`gradsurg.analysis.collector.embedding_statistics`)."""
    u = F.normalize(anchors.detach().float(), dim=-1)
    v = F.normalize(positives.detach().float(), dim=-1)
    cand = v if negatives is None else torch.cat([v, F.normalize(negatives.detach().float(), dim=-1)])
    return embedding_statistics(u, v, u @ cand.T)


def make_collector(loss_module: torch.nn.Module | None = None):
    """A callable ``(anchors, positives, negatives) -> dict`` of the step's statistics.

    It wraps :class:`gradsurg.analysis.collector.StatsCollector` (GD / W / R of the
    loss being trained, plus the embedding statistics); a failure disables it
    (once, with a warning) and the step logs :func:`embedding_stats` instead,
    rather than stopping training.
    """
    collector = StatsCollector(loss_module)
    state = {"ok": True}

    def collect(anchors, positives, negatives=None) -> dict:
        if state["ok"]:
            try:
                return collector(anchors, positives, negatives)
            except Exception as exc:  # noqa: BLE001
                import warnings

                warnings.warn(f"gradsurg: StatsCollector failed ({exc}); GD/W/R statistics disabled for this run")
                state["ok"] = False
        return embedding_stats(anchors, positives, negatives)

    return collect


class StepLogger:
    """Writes per-step rows to ``stats.csv`` and dev scores to ``eval.csv`` (both started afresh by each
    logger, so a rerun in the same folder replaces them) and mirrors them to TensorBoard when available."""

    def __init__(self, directory: str | None, tensorboard: bool = True):
        self.directory = directory
        self._fh = None
        self._writer: csv.DictWriter | None = None
        self._fields: list[str] | None = None
        self.tb = None
        self.rows: list[dict[str, Any]] = []
        self._eval_started = False
        if directory:
            os.makedirs(directory, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(os.path.join(directory, "tensorboard"))
                except Exception:  # tensorboard not installed
                    self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.directory:
            if self._writer is None:
                self._fields = list(row)
                self._fh = open(os.path.join(self.directory, "stats.csv"), "w", newline="", encoding="utf-8")
                self._writer = csv.DictWriter(self._fh, fieldnames=self._fields, extrasaction="ignore")
                self._writer.writeheader()
            self._writer.writerow(row)
            self._fh.flush()
        if self.tb is not None:
            step = int(row.get("step", 0))
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"train/{key}", value, step)

    def log_eval(self, step: int, metrics: dict[str, Any]) -> None:
        if self.directory:
            path = os.path.join(self.directory, "eval.csv")
            new = not self._eval_started  # a run rewrites the file, as stats.csv: no rows of an earlier attempt
            self._eval_started = True
            with open(path, "w" if new else "a", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                if new:
                    w.writerow(["step", "spearman", "pearson", "n_pairs"])
                w.writerow([step, metrics["spearman"], metrics["pearson"], metrics["n_pairs"]])
        if self.tb is not None:
            self.tb.add_scalar("eval/spearman", metrics["spearman"], step)
            self.tb.add_scalar("eval/pearson", metrics["pearson"], step)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
