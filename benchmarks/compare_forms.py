"""How far apart are form="default" and form="reference"? Gradients on one real training batch.

    python benchmarks/compare_forms.py            # prints a Markdown table (docs/objectives.md)

Two dropout views of 64 STS-B train sentences through the report preset's
encoder (packaged all-MiniLM-L6-v2, the trainer's ``cls`` pooler with its MLP,
seed 1), taken as float64 leaves; for every objective and switch combination,
each form at its own defaults, the gradients of both views are compared. At
initialisation every anchor of that batch passes the margin gate (its nearest
neighbour is above cosine 0.7), so a second, synthetic batch (16 clusters of
4 rows in 384 dimensions, noise 0.7, views 0.3 apart; 16% of the own-view
gates and 48% of sg's cross-view gates open) shows the ``w_gd`` differences:

- ``rel``: ``min_c |c g_default - g_reference| / |g_reference|`` (0: the same
  direction up to one constant, i.e. a learning-rate factor; 1: orthogonal);
- ``scale``: ``|g_default| / |g_reference|``;
- ``min cos``: the smallest cosine between the two forms' per-row gradients
  (rows where both are non-zero): how far a single anchor's direction moves.
"""
from __future__ import annotations

import itertools
import sys

import torch

import gradsurg.objectives as obj

COMBOS = [frozenset(c) for r in range(4) for c in itertools.combinations(("w_gd", "w_w", "w_r"), r)]


def batch(n: int = 64, seed: int = 1):
    from gradsurg.train import preset
    from gradsurg.train.trainer import Trainer

    cfg = preset("report").replace(seed=seed, progress=False, tensorboard=False, eval_data=None)
    trainer = Trainer(cfg)
    trainer.encoder.train()
    with torch.no_grad():
        a, p, _ = trainer.step_embeddings(list(range(n)))
    return a.double(), p.double()


def synthetic(n: int = 64, d: int = 384, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n // 4, d, generator=g, dtype=torch.float64)
    x = centres.repeat_interleave(4, 0) + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, x + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)


def grads(module, x, y):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    gx, gy = torch.autograd.grad(module(x, y), (x, y))
    return torch.cat([gx, gy])


def compare(g_def, g_ref):
    ref_norm = float(g_ref.norm())
    if ref_norm == 0 and float(g_def.norm()) == 0:
        return 0.0, float("nan"), 1.0
    c = float((g_def * g_ref).sum() / (g_def * g_def).sum().clamp_min(1e-300))
    rel = float((c * g_def - g_ref).norm()) / max(ref_norm, 1e-300)
    scale = float(g_def.norm()) / max(ref_norm, 1e-300)
    nd, nr = g_def.norm(dim=1), g_ref.norm(dim=1)
    rows = (nd > 1e-12 * nd.max()) & (nr > 1e-12 * nr.max())
    cos = (g_def[rows] * g_ref[rows]).sum(1) / (nd[rows] * nr[rows])
    return rel, scale, float(cos.min()) if rows.any() else float("nan")


def main() -> int:
    batches = [batch(), synthetic()]
    lines = ["| objective | switches | rel (real) | scale (real) | min cos (real) | rel (synth.) | "
             "scale (synth.) | min cos (synth.) |", "|---|---|---|---|---|---|---|---|"]
    for name in ("mhe", "mhs", "barlow_twins", "vicreg", "sg"):
        for sw in COMBOS:
            mod = ",".join(s for s in ("w_gd", "w_w", "w_r") if s in sw)
            factory = obj.OBJECTIVES[name]
            cells = []
            for x, y in batches:
                rel, scale, cos = compare(grads(factory(modified=mod), x, y),
                                          grads(factory(modified=mod, form="reference"), x, y))
                cells += [f"{rel:.3f}", f"{scale:.3g}", f"{cos:.3f}"]
            lines.append(f"| {name} | {mod or 'ori'} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
