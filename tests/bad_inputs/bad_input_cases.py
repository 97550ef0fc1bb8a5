"""How each row of docs/bad_inputs.md is produced: ``CASES[id](tmp_dir, runner)``.

A producer builds the bad input under ``tmp_dir`` and hands it to one entry point. It either
raises (the outcome is the exception's class name and message), or returns ``(outcome,
message)``: ``exit N`` for the command line (the message is its stderr error), ``error record``
for a record source, ``reason`` for ``formats.validate``, ``said`` for what a fallback reported.
The expected outcome and message live only in the table; test_corpus.py compares the two.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

Producer = Callable[[Path, Any], Any]
CASES: dict[str, Producer] = {}


def case(name: str) -> Callable[[Producer], Producer]:
    def register(fn: Producer) -> Producer:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# ------------------------------------------------------------------ recipes and arguments

DEMO = "experiments/configs/demo.yaml"


def _train(r, t: Path, *overrides: str):
    return r.cli("train", DEMO, f"output_dir={t}", *overrides)


@case("recipe-missing-file")
def _(t, r):
    return r.cli("train", t / "missing.yaml")


@case("recipe-not-a-mapping")
def _(t, r):
    return r.cli("train", write(t / "list.yaml", "- steps\n- 10\n"))


@case("recipe-not-yaml")
def _(t, r):
    return r.cli("train", write(t / "broken.yaml", "steps: [1, 2\n"))


@case("recipe-not-utf8")
def _(t, r):
    return r.cli("train", write(t / "latin1.yaml", "run_name: caf\xe9\n".encode("latin-1")))


@case("recipe-unknown-key")
def _(t, r):
    return r.cli("train", write(t / "typo.yaml", "model: {preset: tiny}\nstepz: 3\n"))


@case("recipe-key-not-a-string")
def _(t, r):
    return r.cli("train", write(t / "numbers.yaml", "model: {preset: tiny}\n1: 2\n"))


@case("recipe-unknown-nested-key")
def _(t, r):
    return _train(r, t, "optimizer.lr=0.1")


@case("recipe-wrong-type")
def _(t, r):
    return _train(r, t, "steps=ten")


@case("recipe-float-for-int")
def _(t, r):
    return _train(r, t, "steps=1.5")


@case("recipe-not-a-bool")
def _(t, r):
    return _train(r, t, "freeze.freeze_vision=maybe")


@case("recipe-list-for-buckets")
def _(t, r):
    return _train(r, t, "runtime.buckets.text_buckets=128")


@case("recipe-section-not-mapping")
def _(t, r):
    return _train(r, t, "runtime=fast")


@case("override-not-key-value")
def _(t, r):
    return _train(r, t, "steps")


@case("override-value-not-yaml")
def _(t, r):
    return _train(r, t, "data.source={type: jsonl")


@case("recipe-patch-budget-not-multiple-of-4")
def _(t, r):
    return _train(r, t, "data.patches_per_row=30")


@case("recipe-text-budget-below-one-sample")
def _(t, r):
    return _train(r, t, "data.text_budget=8")


@case("recipe-zero-steps")
def _(t, r):
    return _train(r, t, "steps=0")


@case("recipe-no-model")
def _(t, r):
    return r.cli("train", write(t / "empty.yaml", "run_name: nothing\n"))


@case("recipe-runtime-key-under-model")
def _(t, r):
    return _train(r, t, "model.dtype=bfloat16")


@case("recipe-base-config-cycle")
def _(t, r):
    write(t / "b.yaml", "base_config: a.yaml\n")
    return r.cli("train", write(t / "a.yaml", "base_config: b.yaml\n"))


@case("recipe-mesh-syntax")
def _(t, r):
    return _train(r, t, "mesh=fsdp:2")


@case("recipe-mesh-does-not-divide-devices")
def _(t, r):
    return _train(r, t, "mesh=fsdp=7")


@case("recipe-unknown-source-type")
def _(t, r):
    return _train(r, t, "data.source={type: csv, path: a.csv}")


@case("recipe-source-unknown-key")
def _(t, r):
    return _train(r, t, "data.source={type: jsonl, path: a.jsonl, fmt: llava}")


@case("cli-usage-error")
def _(t, r):
    return r.cli("generate", "--model", t, "--prompt", "hi", "--max-new-tokens", "many")


@case("cli-unknown-command")
def _(t, r):
    return r.cli("frobnicate")


@case("cli-distributed-flags-incomplete")
def _(t, r):
    return r.cli("train", DEMO, "--coordinator", "localhost:1234")


@case("cli-plot-missing-run")
def _(t, r):
    return r.cli("plot", t / "no_run")


@case("process-recipe-missing-file")
def _(t, r):
    return r.process("train", t / "missing.yaml")


@case("process-usage-error")
def _(t, r):
    return r.process("info", "--preset", "13b")


@case("process-config-not-json")
def _(t, r):
    write(t / "config.json", "{'vocab_size': 160}")
    return r.process("info", "--config", t)


@case("process-safetensors-header-past-eof")
def _(t, r):
    d = _hf_dir(t, r, struct.pack("<Q", 1 << 20) + b"{}")
    return r.process("convert", "--hf", d, "--out", t / "out")


# ------------------------------------------------------------------ config.json


def _config(t: Path, r, edit: Callable[[dict], Any]) -> Path:
    cfg = json.loads((r.res.ckpt / "config.json").read_text())
    result = edit(cfg)
    write(t / "config.json", json.dumps(cfg if result is None else result))
    return t


def _info(t, r, edit):
    return r.cli("info", "--config", _config(t, r, edit))


@case("config-missing")
def _(t, r):
    return r.cli("info", "--config", t)


@case("config-not-json")
def _(t, r):
    write(t / "config.json", '{"vocab_size": 160,}')
    return r.cli("info", "--config", t)


@case("config-not-utf8")
def _(t, r):
    write(t / "config.json", b'{"model_type": "qwen2_vl\xff"}')
    return r.cli("info", "--config", t)


@case("config-not-an-object")
def _(t, r):
    return _info(t, r, lambda c: [c])


@case("config-missing-field")
def _(t, r):
    return _info(t, r, lambda c: c.pop("hidden_size") and None)


@case("config-contradictory-hidden-sizes")
def _(t, r):
    return _info(t, r, lambda c: c["vision_config"].update(hidden_size=32))


@case("config-heads-do-not-divide-hidden")
def _(t, r):
    return _info(t, r, lambda c: c.update(num_attention_heads=3, num_key_value_heads=3))


@case("config-vision-heads-zero")
def _(t, r):
    return _info(t, r, lambda c: c["vision_config"].update(num_heads=0))


@case("config-vision-config-not-object")
def _(t, r):
    return _info(t, r, lambda c: c.update(vision_config=[64]))


@case("config-wrong-field-type")
def _(t, r):
    return _info(t, r, lambda c: c.update(rms_norm_eps="1e-6"))


@case("config-unknown-field")
def _(t, r):
    return _info(t, r, lambda c: c.update(num_experts=8))


@case("config-unsupported-rope")
def _(t, r):
    return _info(t, r, lambda c: c.update(rope_scaling={"type": "yarn", "mrope_section": [4, 2, 2]}))


@case("config-image-token-outside-vocab")
def _(t, r):
    return _info(t, r, lambda c: c.update(image_token_id=c["vocab_size"]))


@case("config-eos-token-negative")
def _(t, r):
    return _info(t, r, lambda c: c.update(eos_token_id=[c["eos_token_id"], -1]))


@case("config-pad-token-outside-vocab")
def _(t, r):
    return _info(t, r, lambda c: c.update(pad_token_id=151643))


@case("config-token-id-not-an-integer")
def _(t, r):
    return _info(t, r, lambda c: c.update(video_token_id="13"))


# ------------------------------------------------------------------ safetensors


def _st(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


def _hf_dir(t: Path, r, content: bytes, name: str = "model.safetensors") -> Path:
    d = t / "hf"
    write(d / "config.json", (r.res.ckpt / "config.json").read_bytes())
    write(d / name, content)
    return d


def _convert(t, r, content: bytes):
    return r.cli("convert", "--hf", _hf_dir(t, r, content), "--out", t / "out")


F32 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


@case("st-shorter-than-length-field")
def _(t, r):
    return _convert(t, r, b"\x10\x00\x00")


@case("st-header-length-past-eof")
def _(t, r):
    return _convert(t, r, _st({"w": F32}, b"\0" * 16, length=4096))


@case("st-header-length-absurd")
def _(t, r):
    return _convert(t, r, _st(b"{}", length=2**60))


@case("st-header-not-json")
def _(t, r):
    return _convert(t, r, _st(b"{not json}"))


@case("st-header-not-utf8")
def _(t, r):
    return _convert(t, r, _st(b'{"\xff": 1}'))


@case("st-header-not-an-object")
def _(t, r):
    return _convert(t, r, _st([1, 2, 3]))


@case("st-header-duplicate-tensor")
def _(t, r):
    return _convert(t, r, _st(b'{"w": {}, "w": {}}'))


@case("st-entry-not-an-object")
def _(t, r):
    return _convert(t, r, _st({"w": [0, 16]}))


@case("st-entry-without-offsets")
def _(t, r):
    return _convert(t, r, _st({"w": {"dtype": "F32", "shape": [2, 2]}}, b"\0" * 16))


@case("st-unknown-dtype")
def _(t, r):
    return _convert(t, r, _st({"w": {**F32, "dtype": "F12"}}, b"\0" * 16))


@case("st-negative-dimension")
def _(t, r):
    return _convert(t, r, _st({"w": {**F32, "shape": [2, -2]}}, b"\0" * 16))


@case("st-offsets-reversed")
def _(t, r):
    return _convert(t, r, _st({"w": {**F32, "data_offsets": [16, 0]}}, b"\0" * 16))


@case("st-shape-times-dtype-not-byte-count")
def _(t, r):
    return _convert(t, r, _st({"w": {**F32, "shape": [3, 2]}}, b"\0" * 16))


@case("st-huge-shape")
def _(t, r):
    return _convert(t, r, _st({"w": {"dtype": "F32", "shape": [2**40, 2**20], "data_offsets": [0, 2**62]}}))


@case("st-offsets-out-of-bounds")
def _(t, r):
    return _convert(t, r, _st({"w": {**F32, "data_offsets": [8, 24]}}, b"\0" * 16))


@case("st-offsets-overlap")
def _(t, r):
    return _convert(t, r, _st({"a": F32, "b": {**F32, "data_offsets": [8, 24]}}, b"\0" * 24))


@case("st-truncated-file")
def _(t, r):
    whole = _st({"a": F32, "b": {**F32, "data_offsets": [16, 32]}}, b"\1" * 32)
    return _convert(t, r, whole[:-10])


@case("st-index-not-json")
def _(t, r):
    return r.cli("convert", "--hf", _hf_dir(t, r, b"{", "model.safetensors.index.json"), "--out", t / "out")


@case("st-index-names-missing-shard")
def _(t, r):
    index = json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})
    return r.cli("convert", "--hf", _hf_dir(t, r, index.encode(), "model.safetensors.index.json"),
                 "--out", t / "out")


@case("st-index-path-outside-directory")
def _(t, r):
    index = json.dumps({"weight_map": {"lm_head.weight": "../../elsewhere.safetensors"}})
    return r.cli("convert", "--hf", _hf_dir(t, r, index.encode(), "model.safetensors.index.json"),
                 "--out", t / "out")


@case("st-missing-tensor")
def _(t, r):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(r.res.ckpt / "model.safetensors"))
    del tensors["model.norm.weight"]
    d = _hf_dir(t, r, b"")
    save_file(tensors, str(d / "model.safetensors"))
    from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration

    Qwen2VLForConditionalGeneration.from_pretrained(d)


# ------------------------------------------------------------------ our Orbax checkpoints


def _native(t: Path, r, edit: Callable[[Path], Any]) -> Path:
    d = r.res.copy(r.res.native, t / "native")
    edit(d)
    return d


def _to_hf(t, r, edit):
    return r.cli("convert", "--orbax", _native(t, r, edit), "--to-hf", t / "hf_out")


def _chunk(d: Path) -> Path:
    return next(p for p in sorted((d / "params" / "visual.patch_embed").iterdir()) if not p.name.startswith("."))


@case("native-marker-not-json")
def _(t, r):
    return _to_hf(t, r, lambda d: write(d / "qwen2vl_jax.json", "{format: orbax}"))


@case("native-marker-other-format")
def _(t, r):
    return _to_hf(t, r, lambda d: write(d / "qwen2vl_jax.json", '{"format": "flax/msgpack", "dtype": "float32"}'))


@case("native-marker-without-dtype")
def _(t, r):
    return _to_hf(t, r, lambda d: write(d / "qwen2vl_jax.json", '{"format": "qwen2vl_jax/orbax", "version": 1}'))


@case("native-params-missing")
def _(t, r):
    return _to_hf(t, r, lambda d: shutil.rmtree(d / "params"))


@case("native-array-truncated")
def _(t, r):
    def cut(d):
        chunk = _chunk(d)
        chunk.write_bytes(chunk.read_bytes()[:100])

    return _to_hf(t, r, cut)


@case("native-array-file-missing")
def _(t, r):
    return _to_hf(t, r, lambda d: _chunk(d).unlink())


@case("native-config-does-not-match-arrays")
def _(t, r):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        write(d / "config.json", json.dumps({**cfg, "intermediate_size": 128}))

    return _to_hf(t, r, edit)


@case("native-config-missing")
def _(t, r):
    return _to_hf(t, r, lambda d: (d / "config.json").unlink())


@case("native-save-interrupted")
def _(t, r):
    from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration

    Qwen2VLForConditionalGeneration.from_pretrained(_native(t, r, lambda d: (d / "qwen2vl_jax.json").unlink()))


# ------------------------------------------------------------------ training checkpoints


def _train_ckpt(t: Path, steps=(1,)) -> Path:
    from qwen2vl_jax.train.checkpointing import TrainCheckpointer

    with TrainCheckpointer(t / "ckpt", keep_last=5, say=lambda _: None) as ckpt:
        for s in steps:
            tree = {"w": np.full((32, 32), s, np.float32)}
            ckpt.save(s, tree, tree, data_iter_state={"i": s}, config={"steps": s})
    return t / "ckpt"


def _restore(d: Path, said: list[str] | None = None):
    from qwen2vl_jax.train.checkpointing import TrainCheckpointer

    tree = {"w": np.zeros((32, 32), np.float32)}
    with TrainCheckpointer(d, say=(said.append if said is not None else print)) as ckpt:
        return ckpt.restore(tree, tree)


def _largest(step_dir: Path) -> Path:
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != "qwen2vl_manifest.json"]
    return max(files, key=lambda p: (p.stat().st_size, str(p)))


@case("train-ckpt-empty-directory")
def _(t, r):
    _restore(t / "ckpt")


@case("train-ckpt-incomplete-step")
def _(t, r):
    d = _train_ckpt(t)
    # What a kill mid-save leaves: Orbax's temporary directory, never renamed; nothing else.
    (d / "1").rename(d / "1.orbax-checkpoint-tmp-1234")
    _restore(d)


@case("train-ckpt-truncated-array")
def _(t, r):
    d = _train_ckpt(t)
    victim = _largest(d / "1")
    victim.write_bytes(victim.read_bytes()[:10])
    _restore(d)


@case("train-ckpt-file-missing")
def _(t, r):
    d = _train_ckpt(t)
    _largest(d / "1").unlink()
    _restore(d)


@case("train-ckpt-crash-falls-back")
def _(t, r):
    d = _train_ckpt(t, steps=(1, 2))
    (d / "2" / "qwen2vl_manifest.json").unlink()  # killed after Orbax's commit, before our manifest
    victim = _largest(d / "2")
    victim.write_bytes(victim.read_bytes()[:10])  # ... and an array file truncated since
    said: list[str] = []
    step = _restore(d, said)[0]
    return "said", f"restored step {step}; " + "; ".join(said)


# ------------------------------------------------------------------ images and videos


def _images(image: Any):
    from qwen2vl_jax.processing import Qwen2VLImageProcessor

    Qwen2VLImageProcessor()([image])


@case("image-not-an-image")
def _(t, r):
    _images(str(write(t / "notes.png", "shopping list: eggs, milk")))


@case("image-truncated")
def _(t, r):
    PIL.Image.new("RGB", (300, 200), (10, 200, 30)).save(t / "cut.png")
    data = (t / "cut.png").read_bytes()
    _images(str(write(t / "cut.png", data[: len(data) // 2])))


@case("image-zero-bytes")
def _(t, r):
    _images(str(write(t / "empty.jpg", b"")))


@case("image-missing-file")
def _(t, r):
    _images(str(t / "nope.jpg"))


@case("image-zero-size")
def _(t, r):
    _images(PIL.Image.new("RGB", (0, 5)))


@case("image-aspect-ratio-over-200")
def _(t, r):
    _images(PIL.Image.new("RGB", (402, 2)))


@case("image-unknown-mode")
def _(t, r):
    _images(PIL.Image.new("La", (56, 56)))


@case("image-not-an-image-type")
def _(t, r):
    _images(b"\x89PNG")


@case("image-placeholder-count")
def _(t, r):
    from qwen2vl_jax.processing import Qwen2VLProcessor

    processor = Qwen2VLProcessor.from_pretrained(r.res.ckpt)
    image = PIL.Image.new("RGB", (56, 56))
    processor(text=["<|image_pad|> and <|image_pad|>"], images=[image])


@case("image-cli")
def _(t, r):
    bad = write(t / "photo.jpg", "<html>404 not found</html>")
    return r.cli("generate", "--model", r.res.ckpt, "--image", bad, "--prompt", "hi", "--dtype", "float32")


@case("video-not-a-video")
def _(t, r):
    import pytest

    pytest.importorskip("av")
    from qwen2vl_jax.processing import Qwen2VLVideoProcessor

    Qwen2VLVideoProcessor()(videos=[str(write(t / "clip.mp4", b"junk" * 100))])


class _NoPyAV:
    """``import av`` raises ImportError inside the block (the optional dependency is missing)."""

    def __enter__(self):
        self.saved = sys.modules.get("av")
        sys.modules["av"] = None  # makes `import av` raise ImportError

    def __exit__(self, *exc):
        if self.saved is None:
            sys.modules.pop("av", None)
        else:
            sys.modules["av"] = self.saved


@case("video-pyav-missing")
def _(t, r):
    from qwen2vl_jax.processing import Qwen2VLVideoProcessor

    with _NoPyAV():
        Qwen2VLVideoProcessor()(videos=[str(write(t / "clip.mp4", b"\0" * 64))])


@case("video-pyav-missing-cli")
def _(t, r):
    clip = write(t / "clip.mp4", b"\0" * 64)
    with _NoPyAV():
        return r.cli("generate", "--model", r.res.ckpt, "--video", clip, "--prompt", "hi", "--dtype", "float32")


# ------------------------------------------------------------------ tokenizer and processor files


def _model_dir(t: Path, r, drop: tuple[str, ...] = (), **files: str | bytes) -> Path:
    d = t / "model"
    shutil.copytree(r.res.ckpt, d)
    for name in drop:
        (d / name).unlink()
    for name, content in files.items():
        write(d / name.replace("__", "."), content)
    return d


def _generate(d: Path, r):
    return r.cli("generate", "--model", d, "--prompt", "hi")


@case("tokenizer-missing")
def _(t, r):
    return _generate(_model_dir(t, r, drop=("tokenizer.json",)), r)


@case("tokenizer-not-json")
def _(t, r):
    return _generate(_model_dir(t, r, tokenizer__json='{"version": "1.0", "model": '), r)


@case("tokenizer-without-qwen-tokens")
def _(t, r):
    from tokenizers import Tokenizer, models

    d = _model_dir(t, r)
    Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(d / "tokenizer.json"))
    return _generate(d, r)


@case("tokenizer-config-not-json")
def _(t, r):
    return _generate(_model_dir(t, r, tokenizer_config__json="{'eos_token': '<|im_end|>'}"), r)


@case("tokenizer-config-wrong-type")
def _(t, r):
    return _generate(_model_dir(t, r, tokenizer_config__json='{"eos_token": 151645}'), r)


@case("preprocessor-config-missing")
def _(t, r):
    return _generate(_model_dir(t, r, drop=("preprocessor_config.json",)), r)


# ------------------------------------------------------------------ JSONL records


def _jsonl(t: Path, line: str | bytes, format: str = "auto"):
    from data_pipelines.jsonl_source import ERROR_KEY, JsonlSource

    record = JsonlSource(write(t / "data.jsonl", line), format=format)[0]
    if ERROR_KEY in record:
        return "error record", record[ERROR_KEY]
    return "record", json.dumps(record)


def _reasons(t: Path, record: dict):
    from data_pipelines.formats import validate
    from data_pipelines.jsonl_source import JsonlSource

    canonical = JsonlSource(write(t / "data.jsonl", json.dumps(record)))[0]
    return "reason", "; ".join(validate(canonical, root=t))


USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello"}


@case("jsonl-line-not-json")
def _(t, r):
    return _jsonl(t, '{"messages": [}\n')


@case("jsonl-line-not-utf8")
def _(t, r):
    return _jsonl(t, b'{"messages": "\xe9"}\n')


@case("jsonl-line-not-an-object")
def _(t, r):
    return _jsonl(t, "[1, 2]\n")


@case("jsonl-file-missing")
def _(t, r):
    from data_pipelines.jsonl_source import JsonlSource

    JsonlSource(t / "train.jsonl")


@case("jsonl-unknown-format")
def _(t, r):
    from data_pipelines.jsonl_source import JsonlSource

    JsonlSource(write(t / "data.jsonl", "{}\n"), format="sharegpt")


@case("llava-conversations-not-a-list")
def _(t, r):
    return _jsonl(t, json.dumps({"image": "a.jpg", "conversations": "<image> What is it?"}))


@case("llava-unknown-speaker")
def _(t, r):
    return _jsonl(t, json.dumps({"conversations": [{"from": "robot", "value": "beep"}]}))


@case("llava-value-not-a-string")
def _(t, r):
    return _jsonl(t, json.dumps({"conversations": [{"from": "human", "value": ["<image>", "Hi"]}]}))


@case("llava-placeholder-count")
def _(t, r):
    write(t / "a.jpg", b"")
    return _reasons(t, {"image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image> and <image>: which is bigger?"}, {"from": "gpt", "value": "left"}]})


@case("llava-image-file-missing")
def _(t, r):
    return _reasons(t, {"image": "gone.jpg", "conversations": [
        {"from": "human", "value": "<image> What is it?"}, {"from": "gpt", "value": "a cat"}]})


@case("hf-messages-not-a-list")
def _(t, r):
    return _jsonl(t, json.dumps({"messages": {"role": "user", "content": "Hi"}}), format="hf")


@case("hf-content-item-not-an-object")
def _(t, r):
    return _jsonl(t, json.dumps({"messages": [{"role": "user", "content": ["a.jpg", "What is it?"]}]}), format="hf")


@case("canonical-messages-not-a-list")
def _(t, r):
    return _jsonl(t, json.dumps({"messages": "Hi", "images": []}))


@case("canonical-message-not-an-object")
def _(t, r):
    return _reasons(t, {"messages": [USER, None], "images": []})


@case("canonical-unknown-role")
def _(t, r):
    return _reasons(t, {"messages": [USER, {"role": "robot", "content": "beep"}], "images": []})


@case("canonical-no-assistant")
def _(t, r):
    return _reasons(t, {"messages": [USER], "images": []})


@case("canonical-roles-do-not-alternate")
def _(t, r):
    return _reasons(t, {"messages": [USER, USER, ASSISTANT], "images": []})


@case("canonical-image-entry-not-a-path")
def _(t, r):
    return _jsonl(t, json.dumps({"messages": [USER, ASSISTANT], "images": [{"url": "a.jpg"}]}))


@case("canonical-content-not-text-or-items")
def _(t, r):
    return _reasons(t, {"messages": [{"role": "user", "content": 42}, ASSISTANT], "images": []})


# ------------------------------------------------------------------ generation


def _gen(r, ids=((5, 6, 7),), mask=None, **kw):
    r.res.model.generate(np.asarray(ids), None if mask is None else np.asarray(mask), **kw)


@case("gen-max-new-tokens-zero")
def _(t, r):
    _gen(r, max_new_tokens=0)


@case("gen-max-new-tokens-not-an-integer")
def _(t, r):
    _gen(r, max_new_tokens="16")


@case("gen-temperature-zero-with-sampling")
def _(t, r):
    _gen(r, do_sample=True, temperature=0.0)


@case("gen-top-p-zero")
def _(t, r):
    _gen(r, top_p=0.0)


@case("gen-top-p-above-one")
def _(t, r):
    _gen(r, top_p=1.5)


@case("gen-top-k-negative")
def _(t, r):
    _gen(r, top_k=-1)


@case("gen-too-many-eos-ids")
def _(t, r):
    _gen(r, eos_token_id=list(range(1, 10)))


@case("gen-eos-id-outside-vocab")
def _(t, r):
    _gen(r, eos_token_id=[r.res.cfg.text.vocab_size])


@case("gen-input-ids-outside-vocab")
def _(t, r):
    _gen(r, ids=[[5, r.res.cfg.text.vocab_size + 7]])


@case("gen-input-ids-not-integers")
def _(t, r):
    _gen(r, ids=[[5.0, 6.5]])


@case("gen-right-padding")
def _(t, r):
    _gen(r, ids=[[5, 6, 7], [5, 6, 0]], mask=[[1, 1, 1], [1, 1, 0]])


@case("gen-mask-shape")
def _(t, r):
    _gen(r, mask=[[1, 1]])


@case("gen-cli-max-new-tokens-zero")
def _(t, r):
    return r.cli("generate", "--model", r.res.ckpt, "--prompt", "hi", "--max-new-tokens", "0", "--dtype", "float32")


@case("gen-cli-top-p")
def _(t, r):
    return r.cli("generate", "--model", r.res.ckpt, "--prompt", "hi", "--top-p", "1.5", "--dtype", "float32")


# ------------------------------------------------------------------ chat template


def _chat(messages: Any, jinja: bool = False):
    from qwen2vl_jax.processing import QWEN2VL_CHAT_TEMPLATE, apply_chat_template

    apply_chat_template(messages, chat_template=QWEN2VL_CHAT_TEMPLATE if jinja else None)


@case("chat-messages-not-a-list")
def _(t, r):
    _chat("Hello!")


@case("chat-messages-none")
def _(t, r):
    _chat(None)


@case("chat-message-without-content")
def _(t, r):
    _chat([{"role": "user"}])


@case("chat-content-not-text-or-items")
def _(t, r):
    _chat([{"role": "user", "content": 42}])


@case("chat-jinja-item-not-an-object")
def _(t, r):
    _chat([{"role": "user", "content": [3]}], jinja=True)
