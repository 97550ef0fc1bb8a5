"""Fuzzing the parsers of untrusted input: only our documented errors come out.

* the safetensors reader over random bytes and over structured mutations of a valid file
  (header length, header JSON fields, truncation, byte flips): ``ValueError``, or a reader whose
  every tensor lies inside the file;
* the record importers (``formats`` / ``jsonl_source.convert``, every format) over random
  JSON-like values: ``ValueError`` or a canonical record, and ``formats.validate`` a list of
  reasons; ``JsonlSource`` over random lines: a record or an error record, never an exception;
* the recipe loader over random YAML trees and ``key=value`` overrides: ``ValueError`` /
  ``FileNotFoundError`` or a validated ``RunConfig``;
* the chat template (built-in and Jinja) over random message lists: ``ValueError`` or text.

Each property runs ``EXAMPLES`` examples (200; ``QWEN2VL_FUZZ_EXAMPLES=5000`` searches deeper),
derandomized (the same examples every run, so CI is stable), without a deadline and without an
example database.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_pipelines import formats, jsonl_source
from qwen2vl_jax.checkpoint.safetensors_io import SafetensorsReader
from qwen2vl_jax.processing import QWEN2VL_CHAT_TEMPLATE, apply_chat_template
from qwen2vl_jax.train.run_config import load_run_config

EXAMPLES = int(os.environ.get("QWEN2VL_FUZZ_EXAMPLES", "200"))  # more for a deeper search
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORK = Path(tempfile.mkdtemp(prefix="qwen2vl_fuzz_"))

# ------------------------------------------------------------------ JSON-like values

KEYS = ["messages", "conversations", "from", "value", "role", "content", "type", "text", "image", "images",
        "video", "videos", "image_url", "url", "train", "human", "gpt", "user", "assistant", "system"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.sampled_from(["user", "assistant", "system", "human", "gpt", "image", "video", "text",
                                     "<image>", "<video> hi <image>", "a.jpg", "/abs/b.png", "http://x/y.png"]),
                    st.text(max_size=12))
json_like = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=5)), max_leaves=25)


def _message():
    content = st.one_of(json_like, st.lists(st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["image", "video", "text", "audio"])},
                              optional={"text": json_like, "image": json_like, "video": json_like}),
        json_like), max_size=4))
    return st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot"]),
                                            "content": content}, optional={"train": json_like}), json_like)


records = st.one_of(
    json_like,
    st.fixed_dictionaries({"conversations": st.one_of(json_like, st.lists(st.fixed_dictionaries(
        {"from": json_like, "value": json_like}), max_size=4))}, optional={"image": json_like, "video": json_like}),
    st.fixed_dictionaries({"messages": st.one_of(json_like, st.lists(_message(), max_size=4))},
                          optional={"images": json_like, "videos": json_like}))


@FUZZ
@given(record=records, fmt=st.sampled_from(jsonl_source.FORMATS))
def test_record_importers_raise_only_value_errors(record, fmt):
    try:
        canonical = jsonl_source.convert(record, fmt)
    except ValueError:
        pass
    else:
        assert isinstance(canonical["messages"], list)
        reasons = formats.validate(canonical, root=str(WORK))
        assert isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)
        try:
            jsonl_source.resolve_record(canonical, str(WORK))
        except ValueError:
            pass
    for importer in (formats.from_llava, formats.from_hf_content):
        try:
            importer(record)
        except ValueError:
            pass
    assert isinstance(formats.validate(record, root=str(WORK)), list)


@FUZZ
@given(lines=st.lists(st.one_of(records.map(json.dumps), st.binary(max_size=40), st.text(max_size=40)),
                      min_size=1, max_size=5))
def test_jsonl_source_never_raises_for_a_bad_line(lines):
    path = WORK / "fuzz.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")
                                for x in lines))
    source = jsonl_source.JsonlSource(path)
    for i in range(len(source)):
        record = source[i]
        if not jsonl_source.is_error(record):
            assert isinstance(formats.validate(record), list)


# ------------------------------------------------------------------ safetensors


def _valid_file() -> bytes:
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((4,), np.int64),
               "c": np.zeros((0, 2), np.float16), "d": np.arange(3, dtype=np.uint8)}
    header, data, offset = {"__metadata__": {"format": "pt"}}, b"", 0
    names = {np.float32: "F32", np.int64: "I64", np.float16: "F16", np.uint8: "U8"}
    for name, x in tensors.items():
        raw = x.tobytes()
        header[name] = {"dtype": names[x.dtype.type], "shape": list(x.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


VALID = _valid_file()


def _open_and_read(content: bytes) -> None:
    path = WORK / "fuzz.safetensors"
    path.write_bytes(content)
    try:
        reader = SafetensorsReader(path)
    except ValueError:
        return
    # Opened: every tensor lies inside the file and reads back with exactly its bytes.
    for name in reader.keys():
        begin, end = reader.header[name]["data_offsets"]
        assert 0 <= begin <= end <= reader.data_size
        tensor = reader.get_tensor(name)
        assert tensor.nbytes == end - begin <= len(content)


@FUZZ
@given(content=st.binary(max_size=200))
def test_safetensors_random_bytes(content):
    _open_and_read(content)


@FUZZ
@given(content=st.binary(max_size=120), length=st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1)))
def test_safetensors_random_header_length(content, length):
    _open_and_read(struct.pack("<Q", length) + content)


entries = st.fixed_dictionaries({}, optional={
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "F12", ""]), json_like),
    "shape": st.one_of(st.lists(st.integers(-2, 2**40), max_size=4), json_like),
    "data_offsets": st.one_of(st.lists(st.integers(-4, 2**63), min_size=0, max_size=3), json_like)})


@FUZZ
@given(header=st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__"]), st.one_of(entries, json_like),
                              max_size=4),
       data=st.binary(max_size=64), pad=st.integers(0, 8))
def test_safetensors_random_headers(header, data, pad):
    blob = json.dumps(header).encode() + b" " * pad
    _open_and_read(struct.pack("<Q", len(blob)) + blob + data)


@FUZZ
@given(cut=st.integers(0, len(VALID)), flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1),
                                                              st.integers(0, 255)), max_size=4))
def test_safetensors_mutations_of_a_valid_file(cut, flips):
    content = bytearray(VALID)
    for at, value in flips:
        content[at] = value
    _open_and_read(bytes(content[:cut] if cut < len(VALID) // 2 else content))
    _open_and_read(bytes(content[:cut]))


def test_a_hostile_header_allocates_nothing_it_claims():
    """A 2^60 header length and a 2^62-byte tensor claimed by tiny files: rejected, and the
    memory traced while opening them stays far below what they claim."""
    import tracemalloc

    hostile = [struct.pack("<Q", 2**60) + b"{}",
               _file({"w": {"dtype": "F32", "shape": [2**40, 2**20], "data_offsets": [0, 2**62]}})]
    path = WORK / "hostile.safetensors"
    tracemalloc.start()
    try:
        for content in hostile:
            path.write_bytes(content)
            with pytest.raises(ValueError, match="runs past the end|run past the end"):
                SafetensorsReader(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def _file(header: dict, data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


# ------------------------------------------------------------------ recipes

SCHEMA_KEYS = ["steps", "run_name", "output_dir", "seed", "model", "preset", "checkpoint", "overrides", "runtime",
               "dtype", "mesh", "buckets", "text_buckets", "patch_buckets", "data", "source", "type", "path",
               "text_budget", "patches_per_row", "num_workers", "optimizer", "learning_rate", "freeze",
               "freeze_vision", "eval", "batch_size", "base_config", "tensorboard", "wandb", "vision", "text",
               "spatial_merge_size"]
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False),
                         st.sampled_from(["tiny", "2b", "jsonl", "synthetic_visual_qa", "fsdp=2", "bfloat16", "1e-5",
                                          "auto", "x.yaml", "."]), st.text(max_size=8))
yaml_trees = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(SCHEMA_KEYS), inner, max_size=4)), max_leaves=20)
dotted = st.lists(st.sampled_from(SCHEMA_KEYS), min_size=1, max_size=3).map(".".join)
overrides = st.lists(st.one_of(
    st.tuples(dotted, yaml_scalars.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix(
        "...").strip())).map("=".join),
    st.tuples(dotted, st.text(max_size=10)).map("=".join),
    st.text(max_size=12)), max_size=4)


@FUZZ
@given(tree=st.one_of(yaml_trees, st.fixed_dictionaries({"model": st.just({"preset": "tiny"})},
                                                        optional={k: yaml_trees for k in SCHEMA_KEYS[:12] if k != "model"})),
       extra=overrides)
def test_recipe_loader_raises_only_documented_errors(tree, extra):
    path = WORK / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    try:
        run = load_run_config(path, extra)
    except (ValueError, FileNotFoundError):
        return
    assert run.steps >= 1 and run.data.text_budget >= 16


@FUZZ
@given(text=st.one_of(st.text(max_size=80), st.binary(max_size=80).map(lambda b: b.decode("latin-1"))))
def test_recipe_loader_on_arbitrary_text(text):
    path = WORK / "text.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_run_config(path, [])
    except (ValueError, FileNotFoundError):
        pass


# ------------------------------------------------------------------ chat template


@FUZZ
@given(messages=st.one_of(json_like, st.lists(_message(), max_size=4)), jinja=st.booleans(),
       prompt=st.booleans(), vision_id=st.booleans())
def test_chat_template_raises_only_value_errors(messages, jinja, prompt, vision_id):
    try:
        text = apply_chat_template(messages, add_generation_prompt=prompt, add_vision_id=vision_id,
                                   chat_template=QWEN2VL_CHAT_TEMPLATE if jinja else None)
    except ValueError:
        return
    assert isinstance(text, str)
