"""Train a tiny random BERT with DDP, negatives gathered from every rank, and (optionally) cached steps.

Runs on CPU (gloo) or GPUs (nccl), no downloads::

    torchrun --standalone --nproc_per_node 2 docs/examples/train_ddp.py --steps 20
    torchrun --standalone --nproc_per_node 2 docs/examples/train_ddp.py --mini-batch-size 8 --batch-size 64
    # verify: DDP gradients == one process on the concatenated batch (float64, dropout off)
    torchrun --standalone --nproc_per_node 2 docs/examples/train_ddp.py --check --mini-batch-size 4 \\
        --symmetric --hard-negatives 3

Each rank embeds its own ``--batch-size`` synthetic sentences twice (SimCSE:
two dropout views); the loss on each rank compares its anchors with the
candidates of all ranks (``gather_across_devices=True``), so the global batch
is ``world_size x batch-size``. ``--mini-batch-size`` embeds in chunks with
:func:`gradsurg.cached.cached_step` (GradCache) to fit large batches.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import BertConfig, BertModel

import gradsurg
from gradsurg.cached import cached_loss, cached_step

VOCAB, SEQ = 200, 16


def build_model(dropout: float, dtype: torch.dtype) -> BertModel:
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=SEQ, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    return BertModel(cfg, add_pooling_layer=False).to(dtype)


def synthetic(step: int, rank: int, rows: int) -> dict:
    """Rank ``rank``'s batch at ``step``: random token ids, some padded (deterministic)."""
    g = torch.Generator().manual_seed(10_000 * step + rank)
    ids = torch.randint(1, VOCAB, (rows, SEQ), generator=g)
    lengths = torch.randint(SEQ // 2, SEQ + 1, (rows,), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def concat(batches: list[dict]) -> dict:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def mean_pool(model, batch: dict) -> torch.Tensor:
    out = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    return (out * m).sum(1) / m.sum(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16, help="anchors per rank")
    ap.add_argument("--mini-batch-size", type=int, default=None, help="cached step chunk size (default: uncached)")
    ap.add_argument("--hard-negatives", type=int, default=0, help="extra negatives per rank")
    ap.add_argument("--symmetric", action="store_true")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--deferred", action="store_true",
                    help="with --mini-batch-size: cached_loss + loss.backward() instead of cached_step")
    ap.add_argument("--check", action="store_true",
                    help="float64, dropout off; compare the first step's DDP gradients with one process")
    args = ap.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    status = train(args, device)
    # Free the DDP model (its reducer holds the process group) BEFORE destroying the group:
    # a gloo group destroyed last by the reducer at interpreter exit can deadlock (torch 2.13).
    gc.collect()
    dist.barrier()  # let every rank finish its collectives before tearing the group down
    dist.destroy_process_group()
    return status


def train(args, device) -> int:
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = torch.float64 if args.check else torch.float32
    dropout = 0.0 if args.check else args.dropout

    model = DDP(build_model(dropout, dtype).to(device))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    torch.manual_seed(1234 + rank)  # different dropout masks on each rank

    def loss_fn(anchors, positives, negatives=None):
        return gradsurg.info_nce(anchors, positives, negatives, symmetric=args.symmetric,
                                 gather_across_devices=True)

    def columns(step, r):
        batch = synthetic(step, r, args.batch_size)
        cols = [batch, batch]  # SimCSE: the same sentences, two dropout views
        if args.hard_negatives:
            cols.append(synthetic(step, 1000 + r, args.hard_negatives))
        return cols

    if rank == 0:
        print(f"world={world} device={device} per-rank batch={args.batch_size} global batch="
              f"{world * args.batch_size} mini-batch={args.mini_batch_size} symmetric={args.symmetric} "
              f"hard-negatives/rank={args.hard_negatives}", flush=True)
    for step in range(args.steps):
        t0 = time.perf_counter()
        cols = [to(c, device) for c in columns(step, rank)]
        encode = lambda chunk: mean_pool(model, chunk)  # noqa: E731
        if args.deferred and args.mini_batch_size:
            loss = cached_loss(encode, cols, loss_fn, args.mini_batch_size, no_sync=model.no_sync)
            loss.backward()  # runs the replay of the chunks
            loss = loss.detach()
        else:
            loss = cached_step(encode, cols, loss_fn, mini_batch_size=args.mini_batch_size, no_sync=model.no_sync)
        if args.check and step == 0 and not check_gradients(model.module, columns, loss_fn, world, rank, args):
            return 1
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean_loss = loss.clone()
        dist.all_reduce(mean_loss)
        if rank == 0:
            print(f"step {step}: loss {float(mean_loss) / world:.4f}  ({time.perf_counter() - t0:.2f} s)",
                  flush=True)
    return 0


def check_gradients(module, columns, loss_fn, world, rank, args) -> bool:
    """DDP-averaged gradients after step 0 == one process on the concatenated global batch."""
    got = {k: p.grad.detach().clone() for k, p in module.named_parameters()}
    ok = True
    if rank == 0:
        ref = build_model(0.0, torch.float64)
        ref.train()
        per_rank = [columns(0, r) for r in range(world)]
        cols = [concat([c[i] for c in per_rank]) for i in range(len(per_rank[0]))]
        embs = [mean_pool(ref, c) for c in cols]
        loss = gradsurg.info_nce(*embs, symmetric=args.symmetric)  # single process, global batch
        loss.backward()
        worst, top = 0.0, max(float(p.grad.abs().max()) for p in ref.parameters())
        for k, p in ref.named_parameters():  # floored: some gradients are zero up to rounding (key biases)
            scale = max(float(p.grad.abs().max()), 1e-6 * top)
            worst = max(worst, float((got[k] - p.grad).abs().max()) / scale)
        ok = worst < 1e-9
        print(f"check: max relative gradient difference vs one process = {worst:.2e} -> "
              f"{'check passed' if ok else 'CHECK FAILED'}", flush=True)
    flag = torch.tensor([int(ok)], device=next(module.parameters()).device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


if __name__ == "__main__":
    sys.exit(main())
