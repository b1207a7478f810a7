"""A two-tower (CLIP-style) training step with a learned temperature or a learned SigLIP scale and bias.

    python docs/examples/two_tower.py            # a few steps of each on random paired data (CPU, seconds)

Image and text towers are random MLPs here; in practice they are your encoders.
The loss's hyper-parameters are ordinary parameters of the model, as in open_clip
(``logit_scale``, temperature ``1 / logit_scale.exp()``) and big_vision (SigLIP's
``t' = log 10`` and ``b = -10``); gradsurg returns their exact gradients, formed from the
row statistics it already computes. A queue of detached negatives (MoCo style) is
optional and costs one similarity product, not two. Tested in tests/test_learnable.py.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import gradsurg


class TwoTower(nn.Module):
    def __init__(self, d_image=32, d_text=24, d=16, loss="info_nce"):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(d_image, 64), nn.GELU(), nn.Linear(64, d))
        self.text = nn.Sequential(nn.Linear(d_text, 64), nn.GELU(), nn.Linear(64, d))
        self.loss = loss
        if loss == "info_nce":  # open_clip: logit_scale = log(1 / 0.07), temperature = exp(-logit_scale)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        else:  # SigLIP: t = exp(t') with t' = log 10, bias b = -10
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, images, texts, queue=None):
        img, txt = self.image(images), self.text(texts)  # raw embeddings: gradsurg normalises
        negatives = None if queue is None else queue.negatives()
        if self.loss == "info_nce":
            scale = self.logit_scale.clamp(max=math.log(100)).exp()  # open_clip's cap of 100
            return gradsurg.info_nce(img, txt, negatives, scale=scale, symmetric=True), txt
        return gradsurg.siglip(img, txt, negatives, scale=self.logit_scale.exp(), bias=self.logit_bias), txt


def paired_data(n, seed, d_image=32, d_text=24):
    """Images and texts that share a latent: the towers can learn to match them."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 8, generator=g)
    a = torch.randn(8, d_image, generator=torch.Generator().manual_seed(0))
    b = torch.randn(8, d_text, generator=torch.Generator().manual_seed(1))
    return (latent @ a + 0.1 * torch.randn(n, d_image, generator=g),
            latent @ b + 0.1 * torch.randn(n, d_text, generator=g))


def train(loss="info_nce", steps=30, batch=32, queue_size=0, lr=3e-3, seed=0):
    """Train for ``steps``; returns (losses per step, the model)."""
    torch.manual_seed(seed)
    model = TwoTower(loss=loss)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    queue = gradsurg.NegativeQueue(queue_size) if queue_size else None
    losses = []
    for step in range(steps):
        images, texts = paired_data(batch, seed=1000 + step)
        value, text_emb = model(images, texts, queue)
        opt.zero_grad()
        value.backward()
        opt.step()
        if queue is not None:
            queue.enqueue(text_emb)  # after the step: detached, oldest dropped
        losses.append(value.item())
    return losses, model


if __name__ == "__main__":
    for name, extra in (("info_nce", {}), ("info_nce", {"queue_size": 256}), ("siglip", {})):
        losses, model = train(name, **extra)
        learned = {k: round(v.item(), 4) for k, v in model.named_parameters() if k.startswith("logit_")}
        print(f"{name} {extra}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, {learned}")
