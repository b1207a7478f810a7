"""gradsurg.vocabulary: the backend, reduction and dtype names every layer shares."""
import torch

from gradsurg import vocabulary as V


def test_compute_dtype_is_float32_except_for_float64():
    assert V.compute_dtype(torch.float64) == torch.float64
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert V.compute_dtype(dtype) == torch.float32


def test_dtype_names_spell_every_float_dtype():
    assert V.DTYPE_NAMES == {"float16": torch.float16, "bfloat16": torch.bfloat16,
                             "float32": torch.float32, "float64": torch.float64}
    assert set(V.HALF_DTYPES) < set(V.KERNEL_DTYPES) < set(V.FLOAT_DTYPES)


def test_the_names_are_the_ones_the_engine_checks():
    from gradsurg.engine import dispatch, validation

    assert dispatch.BACKENDS is V.BACKENDS and validation.REDUCTIONS is V.REDUCTIONS
    assert V.BACKENDS == ("auto", "torch", "triton") and V.REDUCTIONS == ("mean", "sum", "none")
