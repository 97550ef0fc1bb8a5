"""smart_resize: the docs/preprocessing.md examples and hypothesis-checked invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen2vl_jax.processing.smart_resize import smart_resize

F = 28


@pytest.mark.parametrize(
    ("h", "w", "lo", "hi", "expected"),
    [
        (70, 70, 3136, 12845056, (56, 56)),  # 2.5 -> 2: round half to even
        (98, 98, 3136, 12845056, (112, 112)),  # 3.5 -> 4
        (3000, 4000, 3136, 12845056, (2996, 4004)),  # hub budget: only rounded
        (3000, 4000, 3136, 1003520, (840, 1148)),  # transformers class default budget
        (720, 1280, 3136, 12845056, (728, 1288)),
        (1, 1, 3136, 12845056, (56, 56)),
    ],
)
def test_spec_examples(h, w, lo, hi, expected):
    assert smart_resize(h, w, F, lo, hi) == expected


@pytest.mark.parity
def test_matches_transformers_on_a_grid():
    hf = pytest.importorskip("transformers.models.qwen2_vl.image_processing_qwen2_vl")
    for h in [1, 2, 13, 14, 15, 27, 28, 42, 70, 99, 126, 500, 1001, 4000]:
        for w in [1, 3, 14, 41, 70, 98, 333, 2000, 5000]:
            for lo, hi in [(3136, 12845056), (3136, 12544), (784, 784 * 4)]:
                if max(h, w) / min(h, w) > 200:
                    continue
                assert smart_resize(h, w, F, lo, hi) == hf.smart_resize(h, w, F, lo, hi), (h, w, lo, hi)


def test_variants_differ_only_in_clamps():
    # 10 px rounds to 0: transformers then takes the grow branch (28 x 812), qwen-vl-utils
    # clamps the rounding to 28 and keeps the width (28 x 1988).
    assert smart_resize(10, 1999, F, 3136, 12845056, variant="hf") == (28, 812)
    assert smart_resize(10, 1999, F, 3136, 12845056, variant="qwen_vl_utils") == (28, 1988)
    # HF clamps the shrink branch to >= 28; qwen-vl-utils can return 0 there.
    assert smart_resize(28, 5600, F, 3136, 28 * 28 * 16, variant="hf")[0] == 28
    assert smart_resize(28, 5600, F, 3136, 28 * 28 * 16, variant="qwen_vl_utils")[0] == 0
    with pytest.raises(ValueError, match="variant"):
        smart_resize(28, 28, variant="torch")


@settings(max_examples=400, deadline=None)
@given(
    h=st.integers(1, 20000),
    w=st.integers(1, 20000),
    min_tokens=st.integers(1, 64),
    extra_tokens=st.integers(0, 20000),
)
def test_invariants(h, w, min_tokens, extra_tokens):
    lo = min_tokens * F * F
    hi = lo + extra_tokens * F * F
    if max(h, w) / min(h, w) > 200:
        with pytest.raises(ValueError, match="aspect ratio"):
            smart_resize(h, w, F, lo, hi)
        return
    rh, rw = smart_resize(h, w, F, lo, hi)
    # Multiples of 28, at least one merged token per side.
    assert rh % F == 0 and rw % F == 0 and rh >= F and rw >= F
    # Within budget, branch by branch (docs/preprocessing.md).
    rounded = (round(h / F) * F, round(w / F) * F)
    area = rounded[0] * rounded[1]
    if area > hi:  # shrink: under the max unless a side had to be clamped up to one factor
        assert rh * rw <= hi or min(rh, rw) == F
    elif area < lo:  # grow: at least the min
        assert rh * rw >= lo
    else:  # already inside: just rounded
        assert (rh, rw) == rounded and lo <= rh * rw <= hi
    # Aspect ratio kept within one factor: some scale s puts both sides within 28 px.
    scales = [1.0, math.sqrt(hi / (h * w)), math.sqrt(lo / (h * w))]
    assert any(abs(rh - s * h) <= F + 1e-6 and abs(rw - s * w) <= F + 1e-6 for s in scales)
