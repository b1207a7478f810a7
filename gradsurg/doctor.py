"""``gradsurg doctor``: the versions, the card, and which backend ``backend='auto'`` picks, and why."""
from __future__ import annotations

import argparse
import platform

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=sorted(_DTYPES),
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
                lines.append(f"  {name:9s} d={d:<5d} -> {dispatch.explain(_DTYPES[name], d, paradigm, dev)}")
    return lines


def run(args: argparse.Namespace) -> int:
    for line in report(args.dtype, args.d, args.loss):
        print(line)
    return 0
