"""The Encoding value type: what the integer `bits` tag means, and how users spell it."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitinfer.codec import BITS, MIXED_BITS
from splitinfer.encoding import FLOAT16, FLOAT32, JPEG, NONE, PER_CHANNEL, Encoding


def test_every_wire_tag_has_one_meaning():
    assert Encoding.of(MIXED_BITS) == PER_CHANNEL
    assert Encoding.of(16) == FLOAT16 and Encoding.of(32) == FLOAT32 and FLOAT32.is_float
    assert [Encoding.of(b).kind for b in (2, 3, 4, 5, 6, 8)] == ["quantized"] * 6
    assert Encoding.of(None, "input") == JPEG and Encoding.of(None, "full") == NONE
    with pytest.raises(ValueError, match="Expected bits"):
        Encoding.of(7)


@given(st.sampled_from((MIXED_BITS, *BITS)))
def test_labels_parse_back_to_the_same_encoding(bits):
    enc = Encoding.of(bits)
    assert Encoding.parse(enc.label) == enc and Encoding.parse(str(bits)) == enc
    assert enc.bits == bits


def test_user_spellings():
    assert Encoding.parse("4-bit").bits == 4 and Encoding.parse(" 8 ").bits == 8
    assert Encoding.parse("float16") == Encoding.parse("fp16") == FLOAT16
    assert Encoding.parse("per_channel") == PER_CHANNEL and Encoding.parse("JPEG") == JPEG
    with pytest.raises(ValueError, match="per-channel"):
        Encoding.parse("seven")
    with pytest.raises(ValueError):
        Encoding("bogus")


def test_the_scheduler_and_the_edge_read_encodings_not_numbers():
    from scheduler.core import Config, Where
    from scheduler.sim_policies import neurosurgeon_table  # noqa: F401 (uses Encoding)

    c = Config("b", 32, Where.SPLIT, 1.0, 0.1, 100.0, 0.1, 1.0, 0.0)
    assert c.encoding == FLOAT32 and c.encoding.label == "float32"
    assert Config("full", None, Where.DEVICE, 1, 0, 0, 0, 0, 0).encoding == NONE
