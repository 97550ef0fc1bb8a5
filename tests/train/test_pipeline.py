"""The grain pipeline: fixed shapes, determinism, exact resume from its state, bad records."""

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from data_pipelines.pipeline import DataConfig, PackedBatches
from qwen2vl_jax.layout.packing import IGNORE_INDEX


def _data(**kw):
    base = dict(source={"type": "synthetic_visual_qa", "num_records": 40, "seed": 0}, text_budget=128,
                patches_per_row=192)
    return DataConfig(**{**base, **kw})


def _equal(a, b):
    return a["batch"].keys() == b["batch"].keys() and all(np.array_equal(a["batch"][k], b["batch"][k]) for k in a["batch"])


def test_batches_have_fixed_shapes_and_real_content(demo_setup):
    _, processor, cfg = demo_setup
    it = PackedBatches(cfg, _data(), processor, rows=2, grad_accum=2, groups=2, seed=0)
    shapes = None
    for _ in range(4):
        item = next(it)
        b = item["batch"]
        now = {k: v.shape for k, v in b.items()}
        shapes = shapes or now
        assert now == shapes  # one compiled step for the whole run
        assert b["input_ids"].shape == (2, 2, 2, 128) and b["pixel_values"].shape == (2, 2, 384, 1176)
        assert (b["labels"] != IGNORE_INDEX).sum() > 0
        assert item["stats"]["samples"] >= 8 and 0 <= item["stats"]["text_padding_fraction"] < 1
    it.close()


def test_same_seed_same_stream_and_other_seed_differs(demo_setup):
    _, processor, cfg = demo_setup
    a = [next(PackedBatches(cfg, _data(), processor, rows=2, seed=3)) for _ in range(1)]
    b = [next(PackedBatches(cfg, _data(), processor, rows=2, seed=3)) for _ in range(1)]
    c = [next(PackedBatches(cfg, _data(), processor, rows=2, seed=4)) for _ in range(1)]
    assert _equal(a[0], b[0]) and not _equal(a[0], c[0])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_restored_state_continues_the_exact_stream(demo_setup, num_workers):
    _, processor, cfg = demo_setup
    data = _data(num_workers=num_workers)  # 40 records: the stream crosses epochs (reshuffled)
    it = PackedBatches(cfg, data, processor, rows=2, grad_accum=2, seed=1)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # the state is plain JSON
    assert state["carry"] or state["records_read"]
    want = [next(it) for _ in range(6)]
    it.close()
    again = PackedBatches(cfg, data, processor, rows=2, grad_accum=2, seed=1)
    again.set_state(state)
    got = [next(again) for _ in range(6)]
    again.close()
    assert all(_equal(w, g) for w, g in zip(want, got))


def _png(color=(200, 30, 30), size=(56, 56)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_records_are_skipped_and_counted(demo_setup, tmp_path, caplog):
    _, processor, cfg = demo_setup
    (tmp_path / "good.png").write_bytes(_png())
    (tmp_path / "corrupt.png").write_bytes(b"this is not a png")

    def llava(image, text, answer="red"):
        return {"image": image, "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]}

    lines = [
        json.dumps(llava("good.png", "<image>\nWhat colour?")),
        json.dumps(llava("corrupt.png", "<image>\nWhat colour?")),  # corrupt image
        json.dumps(llava("good.png", "<image><image>\nTwo?")),  # 2 placeholders, 1 image
        json.dumps(llava("good.png", "<image>\n" + "word " * 300)),  # over-long for a 128-token row
        "{not json",  # invalid JSON line
        json.dumps(llava("missing.png", "<image>\nWhat colour?")),  # missing file
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    data = _data(source={"type": "jsonl", "path": str(tmp_path / "data.jsonl")}, shuffle=False)
    it = PackedBatches(cfg, data, processor, rows=1, seed=0)
    item = next(it)
    it.close()
    assert item["stats"]["samples"] >= 1  # the good record is trained on
    reasons = " | ".join(it.skipped)
    assert sum(it.skipped.values()) >= 5 and item["stats"]["skipped_records"] >= 5
    for needle in ("cannot identify image", "placeholder", "too long", "invalid JSON", "not found"):
        assert needle in reasons, (needle, reasons)
    assert "skipping bad record" in caplog.text


def test_all_text_labels_cover_text_but_not_vision_or_system(demo_setup):
    _, processor, cfg = demo_setup
    it = PackedBatches(cfg, _data(labels="all_text"), processor, rows=1, seed=0)
    b = next(it)["batch"]
    it.close()
    ids, labels = b["input_ids"][0, 0, 0], b["labels"][0, 0, 0]
    learned = labels != IGNORE_INDEX
    assert not learned[ids == cfg.image_token_id].any()
    user = processor.tokenizer.encode("What")[0]
    assert learned[ids == user].any()  # the question is learned too in pre-training mode


def test_bad_config_values_are_named(demo_setup):
    _, processor, cfg = demo_setup
    with pytest.raises(ValueError, match="labels"):
        PackedBatches(cfg, dataclasses.replace(_data(), labels="everything"), processor, rows=1)
    with pytest.raises(ValueError, match="unknown key"):
        PackedBatches(cfg, _data(source={"type": "synthetic_visual_qa", "num_recs": 3}), processor, rows=1)
