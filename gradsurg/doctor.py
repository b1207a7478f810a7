"""``gradsurg doctor``: the versions, the card, and which backend ``backend='auto'`` picks, and why."""
from __future__ import annotations

import argparse
import platform

import torch

from .vocabulary import DTYPE_NAMES



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPE_NAMES),
                        help="input dtypes to explain (default: float32 bfloat16)")
    parser.add_argument("--d", nargs="+", type=int, default=[128, 768], help="embedding sizes (default: 128 768)")
    parser.add_argument("--loss", default="info_nce", choices=["info_nce", "arccon", "mpt", "met", "mat"],
                        help="the preset whose paradigm is explained (default: info_nce)")


def report(dtypes, dims, loss: str = "info_nce") -> list[str]:
    """The lines ``gradsurg doctor`` prints."""
    from . import __version__, paradigm as presets
    from .engine import dispatch

    lines = [f"gradsurg {__version__}, Python {platform.python_version()}, torch {torch.__version__}"]
    problem = dispatch.triton_problem()
    if problem:
        lines.append(f"Triton: {problem}")
    else:
        import triton

        lines.append(f"Triton: {triton.__version__}")
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        lines.append(f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}), "
                     f"{torch.cuda.device_count()} device(s)")
        device = "cuda"
    else:
        lines.append(f"CUDA: not available (torch built with CUDA {torch.version.cuda})")
        device = "cpu"
    paradigm = getattr(presets, loss)()
    lines.append(f"{loss} = {paradigm!r}")
    for dev in ([device] if device == "cuda" else [device, "cuda"]):
        lines.append(f"backend='auto' on {dev} tensors" + ("" if dev == device else " (on a machine with a GPU)") + ":")
        for name in dtypes:
            for d in dims:
                lines.append(f"  {name:9s} d={d:<5d} -> {dispatch.explain(DTYPE_NAMES[name], d, paradigm, dev)}")
    lines.append("structured candidates (directions, masks, guide, hardness, labels, soft targets, supcon): "
                 + dispatch.explain_structured())
    lines += mnrl_lines(DTYPE_NAMES[dtypes[0]], dims[-1], device)
    return lines


#: sentence-transformers' MNRL configurations ``doctor`` explains: (label, directions, partition_mode,
#: hardness_mode, hard-negative columns, per-entry options)
MNRL_CASES = (
    ("query_to_doc, hardness_mode='all_negatives'", ("query_to_doc",), "joint", "all_negatives", 1, ()),
    ("query_to_doc, hardness_mode='in_batch_negatives', no hard negatives", ("query_to_doc",), "joint",
     "in_batch_negatives", 0, ()),
    ("query_to_doc, hardness_mode='in_batch_negatives', hard negatives", ("query_to_doc",), "joint",
     "in_batch_negatives", 1, ()),
    ("query_to_doc, hardness_mode='hard_negatives', hard negatives", ("query_to_doc",), "joint", "hard_negatives",
     1, ()),
    ("query_to_doc + doc_to_query, 'per_direction', hardness", ("query_to_doc", "doc_to_query"), "per_direction",
     "all_negatives", 1, ()),
    ("all four directions, 'joint', hardness", ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"),
     "joint", "all_negatives", 1, ()),
    ("query_to_doc, hardness with negative_mask / keys / guide", ("query_to_doc",), "joint", "all_negatives", 1,
     ("negative_mask",)),
)


def mnrl_lines(dtype: torch.dtype, d: int, device: str, scale: float = 20.0, strength: float = 5.0) -> list[str]:
    """One line per :data:`MNRL_CASES` entry: the paradigm and what ``backend='auto'`` runs for it on
    ``device`` (a GPU's choice when ``device`` is 'cpu'), or the one-line reason it needs the structured engine."""
    from .engine import dispatch
    from .structured import mnrl_route

    dev = "cuda"
    name = str(dtype).replace("torch.", "")
    lines = [f"sentence-transformers' MNRL hardness (scale {scale:g}, hardness_strength {strength:g}; "
             f"backend='auto' on {dev} {name} d={d}" + ("" if device == dev else ", on a machine with a GPU") + "):"]
    for label, dirs, pm, hm, k, extra in MNRL_CASES:
        paradigm, symmetric, why = mnrl_route(scale, dirs, pm, hm, strength, k, extra)
        if paradigm is None:
            lines.append(f"  {label} -> {dispatch.explain_structured(why)}")
        else:
            text = dispatch.explain(dtype, d, paradigm, dev)
            if text.startswith("triton"):  # the path and tiles are those of the rows above (InfoNCE's kernels)
                text = f"{text.split(' (')[0]}, softmax weight kind at temperature {paradigm.weight.temperature:g}"
            lines.append(f"  {label} -> {paradigm!r}" + (" symmetric" if symmetric else "") + " -> " + text)
    return lines


def run(args: argparse.Namespace) -> int:
    for line in report(args.dtype, args.d, args.loss):
        print(line)
    return 0
