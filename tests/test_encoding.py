"""gradsurg.engine.encoding: backend options and hyper-parameter names across the op boundary."""
import math

import pytest
import torch

from gradsurg.engine.encoding import decode_names, decode_options, encode_names, encode_options

EVERY_KIND = {
    "none": None, "yes": True, "no": False, "int": 3, "big": 2**40, "negative": -7, "float": 0.25,
    "tiny": 1e-300, "inf": math.inf, "minus_inf": -math.inf, "path": "fused", "empty": "",
    "punctuation": "a;b=c,d{'e'}", "tuple": (1, 2.5, "x", None), "one": (4,), "list": [True, 0],
    "nested": ((1, 2), [3]),
}


@pytest.mark.parametrize("key", sorted(EVERY_KIND))
def test_every_option_kind_round_trips_with_its_type(key):
    options = {key: EVERY_KIND[key]}
    back = decode_options(encode_options(options))
    assert back == options
    assert type(back[key]) is type(options[key])
    if isinstance(options[key], (list, tuple)):
        assert [type(v) for v in back[key]] == [type(v) for v in options[key]]


def test_all_kinds_together_and_the_empty_dict():
    assert decode_options(encode_options(EVERY_KIND)) == EVERY_KIND
    assert decode_options(encode_options({})) == {}


def test_equal_dicts_give_equal_strings():
    assert encode_options({"b": 1, "a": "x"}) == encode_options({"a": "x", "b": 1})


@pytest.mark.parametrize("bad", ["", "chunk_bytes=1024", "{'a': 1", "[1, 2]", "{1: 2}", "{'a': __import__('os')}",
                                 "{'a': float('nan')}"])
def test_a_malformed_string_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="malformed options string") as err:
        decode_options(bad)
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("value, error, match", [
    (math.nan, ValueError, "'opt': NaN"),
    (torch.ones(1), TypeError, "'opt': values must be None, bool, int, float, str.*Tensor"),
    ({"a": 1}, TypeError, "'opt': values must be .*dict"),
    ((1, object()), TypeError, "'opt': values must be .*object"),
])
def test_a_value_the_string_cannot_carry_is_named(value, error, match):
    with pytest.raises(error, match=match):
        encode_options({"opt": value})


def test_option_names_must_be_strings():
    with pytest.raises(TypeError, match="option names must be strings"):
        encode_options({1: 2})


def test_names_round_trip_and_are_checked():
    for names in ((), ("temperature",), ("scale", "bias")):
        assert decode_names(encode_names(names)) == names
    assert encode_names(["scale", "bias"]) == "scale,bias"
    for bad in (("a,b",), ("",), (3,)):
        with pytest.raises(ValueError, match="hyper-parameter names"):
            encode_names(bad)


def test_the_op_carries_options_through_the_encoding():
    import gradsurg

    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 8, dtype=torch.float64)
    small = gradsurg.info_nce(x, y, chunk_bytes=1)   # one row per chunk
    whole = gradsurg.info_nce(x, y, chunk_bytes=2**30)
    assert torch.allclose(small, whole, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="does not accept option.*bogus"):
        gradsurg.info_nce(x, y, bogus=(1, "two"))


def test_the_caller_travels_with_the_options():
    from gradsurg.engine.encoding import CALLER, decode_call, encode_call

    text = encode_call({"chunk_bytes": 512, "normalize": False}, "info_nce")
    assert decode_call(text) == ({"chunk_bytes": 512, "normalize": False}, "info_nce")
    assert decode_call(encode_call({}, "SigLIPLoss")) == ({}, "SigLIPLoss")
    assert decode_call(encode_options({"path": "fused"})) == ({"path": "fused"}, "paradigm_loss")  # none encoded
    opts, _ = decode_call(text)
    opts["chunk_bytes"] = 1  # every read is a new dict (the parse is cached)
    assert decode_call(text)[0]["chunk_bytes"] == 512
    with pytest.raises(ValueError, match=f"option '{CALLER}' is reserved"):
        encode_call({CALLER: "x"}, "info_nce")
    with pytest.raises(TypeError, match="the caller must be a non-empty str"):
        encode_call({}, "")
