"""Generation behaviour on a random tiny model: stopping, padding, sampling, streaming, defaults."""

import json

import numpy as np
import pytest

from qwen2vl_jax import Qwen2VLForConditionalGeneration, get_preset
from qwen2vl_jax.generation.sampling import process_logits

CFG = get_preset("tiny")
PROMPT = np.array([[0, 0, 9, 10, 11], [12, 13, 14, 15, 16]])
MASK = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])


@pytest.fixture(scope="module")
def model():
    return Qwen2VLForConditionalGeneration(CFG, seed=0)


def test_greedy_is_deterministic_and_returns_prompt_plus_new(model):
    a = model.generate(PROMPT, MASK, max_new_tokens=6, eos_token_id=[])
    b = model.generate(PROMPT, MASK, max_new_tokens=6, eos_token_id=[])
    assert a.shape == (2, 11) and (a[:, :5] == PROMPT).all()
    np.testing.assert_array_equal(a, b)


def test_rows_stop_independently_and_are_padded(model):
    free = model.generate(PROMPT, MASK, max_new_tokens=6, eos_token_id=[])
    eos = int(free[0, 5 + 1])  # row 0's second new token
    out = model.generate(PROMPT, MASK, max_new_tokens=6, eos_token_id=eos, pad_token_id=99)
    row0 = out[0, 5:].tolist()
    stop = row0.index(eos)
    assert row0[stop + 1:] == [99] * (len(row0) - stop - 1)
    # min_new_tokens masks eos until reached.
    out = model.generate(PROMPT, MASK, max_new_tokens=6, min_new_tokens=4, eos_token_id=eos, pad_token_id=99)
    assert eos not in out[0, 5:9].tolist()


def test_all_rows_finished_ends_early(model):
    free = model.generate(PROMPT[:1], MASK[:1], max_new_tokens=8, eos_token_id=[])
    first = int(free[0, 5])
    out = model.generate(PROMPT[:1], MASK[:1], max_new_tokens=8, eos_token_id=first)
    assert out.shape == (1, 6) and out[0, 5] == first


def test_sampling_is_seeded(model):
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.5, eos_token_id=[])
    a = model.generate(PROMPT, MASK, seed=1, **kw)
    np.testing.assert_array_equal(a, model.generate(PROMPT, MASK, seed=1, **kw))
    assert not np.array_equal(a, model.generate(PROMPT, MASK, seed=2, **kw))
    greedy = model.generate(PROMPT, MASK, max_new_tokens=8, eos_token_id=[])
    np.testing.assert_array_equal(model.generate(PROMPT, MASK, top_k=1, seed=3, **kw), greedy)


def test_streamer_receives_every_token_in_chunks(model):
    chunks = []
    out = model.generate(PROMPT, MASK, max_new_tokens=10, eos_token_id=[], streamer=chunks.append, stream_chunk=3)
    assert len(chunks) == 4 and [c.shape[1] for c in chunks] == [1, 3, 3, 3]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), out[:, 5:])


def test_process_logits_matches_transformers_rules():
    import jax.numpy as jnp

    logits = jnp.asarray([[2.0, -1.0, 0.5, 3.0, 1.0]])
    presence = jnp.asarray([[True, True, False, False, False]])
    knobs = dict(repetition_penalty=jnp.float32(2.0), eos_ids=jnp.asarray([3, -1], jnp.int32),
                 min_new_tokens=jnp.int32(1), temperature=jnp.float32(1.0), top_k=jnp.int32(0),
                 top_p=jnp.float32(1.0))
    out = np.asarray(process_logits(logits, presence, jnp.int32(0), knobs, do_sample=False))
    assert out[0, :3].tolist() == [1.0, -2.0, 0.5] and out[0, 3] == -np.inf
    knobs.update(min_new_tokens=jnp.int32(0), top_k=jnp.int32(2), repetition_penalty=jnp.float32(1.0))
    out = np.asarray(process_logits(logits, presence, jnp.int32(0), knobs, do_sample=True))
    assert np.isfinite(out[0]).tolist() == [True, False, False, True, False]
    # top_p: probabilities of [2, -1, .5, 3, 1] are ~[.23, .01, .05, .62, .09]; top_p=0.8 keeps 3 and 0.
    knobs.update(top_k=jnp.int32(0), top_p=jnp.float32(0.8))
    out = np.asarray(process_logits(logits, presence, jnp.int32(0), knobs, do_sample=True))
    assert np.isfinite(out[0]).tolist() == [True, False, False, True, False]


def test_defaults_come_from_generation_config(tmp_path):
    m = Qwen2VLForConditionalGeneration(CFG, seed=0, generation_config={"eos_token_id": [3, 4], "pad_token_id": 5,
                                                                        "max_new_tokens": 7})
    s = m.generation_settings()
    assert (s.eos_token_id, s.pad_token_id, s.max_new_tokens) == ((3, 4), 5, 7)
    s = m.generation_settings(eos_token_id=9, max_new_tokens=2)  # explicit arguments win
    assert (s.eos_token_id, s.max_new_tokens) == ((9,), 2)
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["pad_token_id"] == 5
    assert Qwen2VLForConditionalGeneration.from_pretrained(tmp_path).generation_config["eos_token_id"] == [3, 4]
    plain = Qwen2VLForConditionalGeneration(CFG, seed=0).generation_settings()
    assert (plain.eos_token_id, plain.pad_token_id, plain.max_new_tokens, plain.top_k) == ((1,), 2, 20, 50)


def test_bad_generation_arguments(model):
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        model.generate(PROMPT, MASK, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        model.generate(PROMPT, MASK, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(PROMPT, MASK, do_sample=True, temperature=0.0)


def test_top_p_with_tied_top_logits_keeps_one_token():
    # transformers decides per sorted position: tied maxima are never all dropped.
    import jax.numpy as jnp

    knobs = dict(repetition_penalty=jnp.float32(1.0), eos_ids=jnp.asarray([-1], jnp.int32),
                 min_new_tokens=jnp.int32(0), temperature=jnp.float32(0.1), top_k=jnp.int32(1),
                 top_p=jnp.float32(0.001))
    logits = jnp.asarray([[3.0, 3.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = np.asarray(process_logits(logits, jnp.zeros((2, 4), bool), jnp.int32(0), knobs, do_sample=True))
    assert np.isfinite(out).sum(-1).tolist() == [1, 1]
    knobs.update(top_k=jnp.int32(0), top_p=jnp.float32(0.5), temperature=jnp.float32(1.0))
    out = np.asarray(process_logits(logits, jnp.zeros((2, 4), bool), jnp.int32(0), knobs, do_sample=True))
    assert np.isfinite(out[1]).sum() == 2  # uniform over 4: keep the top half


def test_batch_padding_rows_do_not_keep_generation_running(model):
    prompt = np.array([[9, 10, 11], [12, 13, 14], [15, 16, 17]])  # 3 rows -> batch bucket 4
    free = model.generate(prompt, max_new_tokens=6, eos_token_id=[])
    eos = sorted({int(t) for t in free[:, 3]})  # every real row stops at its first new token
    out = model.generate(prompt, max_new_tokens=6, eos_token_id=eos)
    assert out.shape == (3, 4)


def test_right_padded_prompts_are_rejected(model):
    with pytest.raises(ValueError, match=r"rows \[0\] are right-padded"):
        model.generate(np.array([[9, 10, 0]]), np.array([[1, 1, 0]]), max_new_tokens=2)
