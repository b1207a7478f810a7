"""Training configuration: one dataclass, presets, YAML/JSON files and ``key=value`` overrides.

A :class:`TrainConfig` describes one unsupervised (SimCSE-style) training run
(supervised-contrastive with a labelled corpus, ``label_column``):
the encoder, the pooler, the loss chosen by name plus its parameters, the data,
the optimiser and the evaluation schedule. It round-trips through
``to_dict`` / ``from_dict`` and through YAML or JSON files, and every field can
be overridden on the command line (``--set lr=1e-5`` or a dedicated flag).

Three presets are provided:

``quick``
    The packaged all-MiniLM-L6-v2 with SimCSE's ``cls`` pooler (MLP in
    training, raw [CLS] at evaluation: 79.7 STS-B dev Spearman before
    training, room to learn, whereas its own mean pooling is already at 86.7
    and can only be degraded by unsupervised training), the first 4000
    distinct STS-B train sentences (no scores), batch 64, lr 3e-5, 24 steps,
    evaluation every 8 steps on 300 STS-B dev pairs spread over the file,
    the best checkpoint scored on all 1500 dev pairs; one to a few minutes per
    run on 2 CPU cores.
``report``
    The quick preset trained until the dev score stops improving: up to 160
    steps (3 epochs of the 4000 sentences, lr decaying linearly over 160), evaluation every 8 steps on the 300 dev pairs, stop after 3
    evaluations in a row without a new best (``patience``); the best
    checkpoint is scored on all 1500 dev pairs. A few minutes per run on 2
    CPU cores; what docs/training.md's per-switch report uses.
``paper``
    The paper's and SimCSE's unsupervised setting: ``bert-base-uncased``, the
    ``cls`` pooler with the training-time MLP, batch 64 (SimCSE; the paper's
    sweeps use 64-128), lr 3e-5 (1e-5 ... 3e-5), 1 epoch over 1M Wikipedia
    sentences, max length 32, gradient clipping at norm 1.0 (the HF
    Trainer's ``max_grad_norm``, which SimCSE runs with), evaluation on
    STS-B dev every 125 steps. Meant for a GPU; the user supplies the corpus
    (``train_data``).

Both follow SimCSE's step: AdamW (no weight decay) with linear decay and no
warmup, gradient clipping at norm 1.0 (the default of ``grad_clip``), the
``cls`` pooler's MLP initialised as BERT's layers (N(0, 0.02), bias 0).
What differs from SimCSE is listed in ``docs/training.md``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

#: Poolers understood by :mod:`gradsurg.train.models`.
POOLERS = ("cls", "cls_before_pooler", "avg", "mask")

#: Formats of a training corpus (see :func:`gradsurg.train.data.read_corpus`).
CORPUS_FORMATS = ("auto", "txt", "stsb-csv", "csv", "tsv", "jsonl")

#: Forms of the non-contrastive objectives and sg (see gradsurg.objectives).
FORMS = ("default", "reference")

#: Formats of an STS evaluation file (see :func:`gradsurg.train.data.read_sts_pairs`).
STS_FORMATS = ("stsb-csv", "sick", "senteval", "hf")

#: Training precisions (config field ``precision``): fp32 (no autocast), bf16 and fp16
#: (``torch.autocast`` around the encoder forward and the loss; fp16 with a gradient scaler).
PRECISIONS = ("fp32", "bf16", "fp16")


#: the STS-B train and dev splits shipped inside the package (gradsurg/data/, resolved by
#: gradsurg.train.data): the default data of every preset and of ``gradsurg evaluate``
PACKAGED_PREFIX = "packaged:"
STSB_TRAIN = PACKAGED_PREFIX + "stsb-train"
STSB_DEV = PACKAGED_PREFIX + "stsb-dev"

#: the longest :meth:`TrainConfig.run_name` (longer names are shortened in the middle)
RUN_NAME_MAX = 100


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range (the message names it)."""


@dataclass
class TrainConfig:
    """Everything one training run needs.

    Attributes are grouped as model, loss, data, optimisation, evaluation and
    output. ``loss_params`` is passed verbatim to
    ``gradsurg.registry.build_loss(loss, **loss_params)``; ``modified`` is a
    shortcut for the non-contrastive objectives' ``modified`` parameter
    (a comma string from ``w_gd,w_w,w_r``).
    """

    # model
    model: str = "minilm"
    pooler: str = "cls"
    mlp_only_train: bool = True
    max_len: int = 32
    # loss
    loss: str = "info_nce"
    loss_params: dict = field(default_factory=dict)
    modified: str | None = None
    #: the objectives' form: "default" (the documented clean one) or "reference" (the paper's
    #: code, see docs/objectives.md); null: the loss's default. Passed as ``form=`` to the loss.
    form: str | None = None
    # data
    train_data: str | None = STSB_TRAIN
    train_format: str = "auto"
    text_column: str | None = None
    hard_negative_column: str | None = None
    #: a class / cluster label per sentence (csv/tsv/jsonl corpora, loss info_nce): every candidate whose
    #: label equals the anchor's is a target, uniformly (SupCon-style, several positives per anchor;
    #: docs/training.md "Labelled data")
    label_column: str | None = None
    max_train_sentences: int | None = 4000
    # optimisation
    batch_size: int = 64
    #: cached (GradCache-style) steps: embed the batch in chunks of this many sentences per
    #: column, set the loss's gradient on the whole batch, replay the chunks (gradsurg.cached)
    mini_batch_size: int | None = None
    #: drop from each anchor's candidates the rows whose text equals its anchor's or positive's
    #: (duplicate sentences in a batch are false negatives; info_nce only; docs/api.md "Structured candidates")
    mask_duplicates: bool = False
    lr: float = 3e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    epochs: int = 1
    max_steps: int | None = 24
    #: max-norm of the gradient clipping before each optimiser step (all trained parameters, 2-norm),
    #: SimCSE's value: the HF Trainer's max_grad_norm=1.0; null: no clipping
    grad_clip: float | None = 1.0
    seed: int = 42
    device: str = "auto"
    #: "fp32" (no autocast), "bf16" or "fp16": torch.autocast (CPU and CUDA) around the encoder
    #: forward and the loss; the weights, the optimiser and evaluation stay float32; fp16 steps
    #: go through a gradient scaler (torch.amp.GradScaler), unscaled before clipping
    precision: str = "fp32"
    #: compile the encoder's transformer with torch.compile (nn.Module.compile: same parameters and
    #: state-dict keys; the first steps and each new sequence length pay the compilation)
    compile: bool = False
    # evaluation
    eval_data: str | None = STSB_DEV
    eval_format: str = "stsb-csv"
    eval_split: str | None = None
    eval_every: int = 8
    eval_max_pairs: int | None = 300
    eval_at_start: bool = False
    final_eval_data: str | None = None
    final_eval_format: str | None = None
    eval_batch_size: int = 128
    #: stop after this many evaluations in a row without a new best dev score (null: never)
    patience: int | None = None
    #: a folder with STS12-16 / STS-B / SICK-R (gradsurg.train.suite): the best checkpoint is
    #: scored on it at the end (result.suite)
    suite_data: str | None = None
    # output / logging
    output_dir: str | None = None
    save_best: bool = False
    log_every: int = 1
    tensorboard: bool = True
    progress: bool = True

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` naming the first bad field; return self.

        Numbers given as strings (YAML 1.1 reads ``1e-5`` as a string) are converted.
        """
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, float(value))
                except ValueError:
                    raise ConfigError(f"config field {name!r} must be a number, got {value!r}") from None
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("config field 'model' must be a non-empty model name or path")
        if self.pooler not in POOLERS:
            raise ConfigError(f"config field 'pooler' is {self.pooler!r}; expected one of {', '.join(POOLERS)}")
        if not isinstance(self.loss, str) or not self.loss:
            raise ConfigError("config field 'loss' must be a loss name (see gradsurg.registry.available_losses())")
        if not isinstance(self.loss_params, dict):
            raise ConfigError(f"config field 'loss_params' must be a mapping, got {type(self.loss_params).__name__}")
        for name in ("max_len", "batch_size", "epochs", "eval_every", "eval_batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.batch_size < 2:
            raise ConfigError("config field 'batch_size' must be at least 2 (a contrastive batch needs negatives)")
        for name in ("max_steps", "max_train_sentences", "eval_max_pairs", "mini_batch_size", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"config field {name!r} must be a positive integer or null, got {value!r}")
        if self.eval_max_pairs is not None and self.eval_max_pairs < 2:
            raise ConfigError(f"config field 'eval_max_pairs' must be >= 2 (a correlation needs 2 pairs) or null, "
                              f"got {self.eval_max_pairs!r}")
        if not _real(self.lr) or not (0 < self.lr < 1):
            raise ConfigError(f"config field 'lr' must be a number in (0, 1), got {self.lr!r}")
        if not _real(self.weight_decay) or not (0 <= self.weight_decay < math.inf):
            raise ConfigError(f"config field 'weight_decay' must be a finite number >= 0, got {self.weight_decay!r}")
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise ConfigError(f"config field 'warmup_steps' must be an integer >= 0, got {self.warmup_steps!r}")
        if self.grad_clip is not None and (not _real(self.grad_clip) or not (0 < self.grad_clip < math.inf)):
            raise ConfigError(f"config field 'grad_clip' must be a finite number > 0 or null, got {self.grad_clip!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"config field 'precision' is {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        for name in ("mlp_only_train", "eval_at_start", "save_best", "tensorboard", "progress", "compile",
                     "mask_duplicates"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"config field {name!r} must be true or false, got {getattr(self, name)!r}")
        for name in ("device", "train_data", "eval_data", "final_eval_data", "output_dir", "text_column",
                     "hard_negative_column", "label_column", "eval_split"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"config field {name!r} must be a string{'' if name == 'device' else ' or null'}, "
                                  f"got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"config field 'seed' must be an integer, got {self.seed!r}")
        if self.train_format not in CORPUS_FORMATS:
            raise ConfigError(
                f"config field 'train_format' is {self.train_format!r}; expected one of {', '.join(CORPUS_FORMATS)}"
            )
        for name in ("eval_format", "final_eval_format"):
            value = getattr(self, name)
            if value is not None and value not in STS_FORMATS:
                raise ConfigError(f"config field {name!r} is {value!r}; expected one of {', '.join(STS_FORMATS)}")
        if self.mask_duplicates and self.loss != "info_nce":
            raise ConfigError(f"config field 'mask_duplicates' works with loss 'info_nce' (its structured "
                              f"candidates), not {self.loss!r}")
        if self.mask_duplicates and self.loss_params.get("normalizer") == "global":
            raise ConfigError("config field 'mask_duplicates' does not combine with loss_params.normalizer='global' "
                              "(the global normaliser runs on the paradigm engine, without candidate masks)")
        if self.label_column is not None:
            self._check_label_column()
        if self.form is not None and self.form not in FORMS:
            raise ConfigError(f"config field 'form' is {self.form!r}; expected one of {', '.join(FORMS)} or null")
        if self.suite_data is not None and (not isinstance(self.suite_data, str) or not self.suite_data):
            raise ConfigError(f"config field 'suite_data' must be a folder path or null, got {self.suite_data!r}")
        if self.modified is not None:
            parts = parse_modified(self.modified)
            self.modified = ",".join(parts) if parts else None
        return self

    def _check_label_column(self) -> None:
        """``label_column``: a non-empty column name, loss info_nce on its structured path (batch
        normaliser, float temperature, directions ('query_to_doc',)), a corpus with columns."""
        if not self.label_column:
            raise ConfigError("config field 'label_column' must be a column name or null, got ''")
        if self.loss != "info_nce":
            raise ConfigError(f"config field 'label_column' works with loss 'info_nce' (its structured candidates: "
                              f"every candidate with the anchor's label is a target), not {self.loss!r}")
        params = self.loss_params
        if params.get("normalizer") == "global":
            raise ConfigError("config field 'label_column' does not combine with loss_params.normalizer='global' "
                              "(the global normaliser runs on the paradigm engine, without labels)")
        if params.get("learnable"):
            raise ConfigError("config field 'label_column' does not combine with loss_params.learnable=true "
                              "(labels take a float temperature)")
        directions = params.get("directions") or ("query_to_doc",)
        if params.get("symmetric") or tuple([directions] if isinstance(directions, str) else directions or ()) \
                != ("query_to_doc",):
            raise ConfigError("config field 'label_column': labels are defined for the direction query_to_doc only "
                              "(leave out loss_params.symmetric and loss_params.directions)")
        if self.train_format in ("txt", "stsb-csv") or (self.train_format == "auto" and self.train_data == STSB_TRAIN):
            fmt = "stsb-csv" if self.train_format == "auto" else self.train_format
            raise ConfigError(f"config field 'label_column' needs a csv/tsv/jsonl corpus with a header "
                              f"(train_format csv, tsv, jsonl or auto), not {fmt} (train_data {self.train_data!r})")

    # ------------------------------------------------------------- conversion
    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dictionary of every field."""
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """Build a config from a mapping; unknown keys raise :class:`ConfigError` naming them.

        ``base`` (default: the dataclass defaults) supplies the fields that
        ``data`` leaves out. A ``preset`` key selects the base by name.
        """
        data = dict(data or {})
        preset_name = data.pop("preset", None)
        if preset_name is not None:
            base = preset(preset_name)
        known = set(cls.field_names())
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {', '.join(map(repr, unknown))}; known fields: {', '.join(sorted(known))}"
            )
        values = (base or cls()).to_dict()
        values.update(copy.deepcopy(data))
        if values.get("loss_params") is None:
            values["loss_params"] = {}
        return cls(**values).validate()

    @classmethod
    def from_file(cls, path: str | os.PathLike, base: "TrainConfig | None" = None) -> "TrainConfig":
        """Load a config from a ``.yaml``/``.yml`` or ``.json`` file."""
        data = load_mapping(path)
        return cls.from_dict(data, base=base)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = str(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if path.endswith((".yaml", ".yml")):
            import yaml

            with open(path, "w", encoding="utf-8") as fh:
                yaml.safe_dump(self.to_dict(), fh, sort_keys=False)
        else:
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(self.to_dict(), fh, indent=2)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some fields changed (unknown names raise :class:`ConfigError`)."""
        return TrainConfig.from_dict(changes, base=self)

    def loss_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``build_loss``: ``loss_params`` plus ``modified`` when set."""
        kwargs = dict(self.loss_params)
        if self.modified:
            kwargs["modified"] = self.modified
        if self.form:
            kwargs["form"] = self.form
        return kwargs

    def run_name(self) -> str:
        """A short, file-name-safe identifier of the loss, its parameters and the seed."""
        parts = [self.loss]
        if self.modified:
            parts.append("m_" + self.modified.replace(",", "+"))
        if self.form and self.form != "default":
            parts.append(self.form)
        for key in sorted(self.loss_params):
            parts.append(f"{key}={self.loss_params[key]}")
        parts.append(f"seed{self.seed}")
        name = re.sub(r"[^A-Za-z0-9._=+,-]+", "-", "_".join(str(p).replace(" ", "") for p in parts))
        if len(name) > RUN_NAME_MAX:  # a folder name must stay well below the file systems' 255 bytes
            name = name[: RUN_NAME_MAX - 12] + "~" + name[-11:]
        return name


def _real(value: Any) -> bool:
    """A real number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_modified(value: Any) -> list[str]:
    """Normalise a ``modified`` value (comma string, list, ``none``/``ori``) to a list of switches."""
    if value is None:
        return []
    if isinstance(value, str):
        if value.strip().lower() in ("", "none", "ori", "original", "false"):
            return []
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise ConfigError(f"config field 'modified' must be a comma string or a list, got {value!r}")
    allowed = ("w_gd", "w_w", "w_r")
    bad = [v for v in items if v not in allowed]
    if bad:
        raise ConfigError(f"config field 'modified' has unknown switch(es) {bad}; expected a subset of {allowed}")
    return [v for v in allowed if v in items]


def parse_value(text: str) -> Any:
    """Parse a command-line value: int, float, else YAML scalars/lists/maps (JSON without pyyaml), else the string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        import yaml

        return yaml.safe_load(text)
    except ImportError:  # pragma: no cover - pyyaml is a dependency of the train extra
        try:
            return json.loads(text)
        except ValueError:
            return text
    except Exception:
        return text


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["lr=1e-5", "loss_params.temperature=0.1"]`` into a (nested) dict of overrides."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        value = parse_value(text)
        if "." in key:
            head, sub = key.split(".", 1)
            if head != "loss_params":
                raise ConfigError(f"override {key!r}: only loss_params.<name> may be dotted")
            out.setdefault("loss_params", {})[sub] = value
        else:
            out[key] = value
    return out


def load_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON mapping from a file, with errors naming the file."""
    path = str(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"config file {path!r} is a folder")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc}") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover
            raise ConfigError(f"reading {path!r} needs pyyaml (pip install pyyaml)") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"config file {path!r}{where}: not valid YAML ({problem})") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            where = f" line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise ConfigError(f"config file {path!r}{where}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping, got {type(data).__name__}")
    return data


_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"save_best": True},  # the docs evaluate <run>/best
    "report": {
        "save_best": True,
        "epochs": 3,
        "max_steps": 160,
        "eval_every": 8,
        "patience": 3,
    },
    "paper": {
        "model": "bert-base-uncased",
        "pooler": "cls",
        "mlp_only_train": True,
        "max_len": 32,
        "train_data": None,  # the user's corpus, e.g. SimCSE's wiki1m_for_simcse.txt
        "train_format": "txt",
        "max_train_sentences": None,
        "batch_size": 64,
        "lr": 3e-5,
        "grad_clip": 1.0,  # SimCSE trains with the HF Trainer's max_grad_norm=1.0
        "epochs": 1,
        "max_steps": None,
        "eval_every": 125,
        "eval_max_pairs": None,
        "eval_at_start": True,
        "device": "auto",
        "save_best": True,
    },
}


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def preset(name: str) -> TrainConfig:
    """The named preset as a :class:`TrainConfig` (``quick`` or ``paper``)."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {', '.join(preset_names())}")
    values = TrainConfig().to_dict()
    values.update(copy.deepcopy(_PRESETS[name]))
    return TrainConfig(**values).validate()


# ----------------------------------------------------------- the field list
def _field_notes() -> dict[str, tuple[str, str]]:
    """``{field: (group, note)}`` read from the source of :class:`TrainConfig`: the ``# group``
    comment above each field and its ``#:`` lines (empty when the source is not available)."""
    import inspect

    try:
        lines = inspect.getsource(TrainConfig).splitlines()
    except (OSError, TypeError):  # pragma: no cover - compiled without sources
        return {}
    notes: dict[str, tuple[str, str]] = {}
    group, pending = "", []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
        elif text.startswith("#"):
            group, pending = text[1:].strip(), []
        elif re.match(r"^\w+\s*:", text) and line.startswith("    ") and not line.startswith("     "):
            notes[text.split(":", 1)[0].strip()] = (group, " ".join(pending))
            pending = []
        elif text.startswith("def "):  # the methods: the fields are above
            break
    return notes


def _show(value: Any) -> str:
    """A value as ``--set`` / YAML writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def describe_fields(base: "TrainConfig | None" = None) -> list[dict[str, str]]:
    """Every field of :class:`TrainConfig` in order: ``name``, ``type``, ``default`` (its value in
    ``base``, default the dataclass defaults), ``group`` and ``note`` (the source's comments)."""
    base = base or TrainConfig()
    notes = _field_notes()
    choices = {"pooler": POOLERS, "train_format": CORPUS_FORMATS, "eval_format": STS_FORMATS,
               "final_eval_format": STS_FORMATS, "form": FORMS}
    rows = []
    for f in dataclasses.fields(TrainConfig):
        group, note = notes.get(f.name, ("", ""))
        if f.name in choices:
            note = (note + " " if note else "") + f"One of: {', '.join(choices[f.name])}."
        rows.append({"name": f.name, "type": str(f.type), "default": _show(getattr(base, f.name)),
                     "group": group, "note": note})
    return rows


def format_fields(base: "TrainConfig | None" = None, title: str = "") -> str:
    """The field list of ``gradsurg ablate --list-fields``: one line per field (``name: type =
    default``) under its group, its note indented below."""
    out = [title] if title else []
    group = None
    for row in describe_fields(base):
        if row["group"] != group:
            group = row["group"]
            out.append(f"\n{group or 'other'}:")
        out.append(f"  {row['name']}: {row['type']} = {row['default']}")
        if row["note"]:
            out.extend(textwrap.wrap(row["note"], width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(out)
