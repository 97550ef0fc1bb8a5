"""The input pipeline: fixed shapes, determinism, exact resume from its state, bad records, epochs.
(Group streams across processes and workers: tests/data_pipelines/test_group_streams.py.)"""

import dataclasses
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from data_pipelines.group_stream import GroupStream
from data_pipelines.pipeline import DataConfig, EpochOrder, PackedBatches
from qwen2vl_jax.layout.packing import IGNORE_INDEX


def _data(**kw):
    base = dict(source={"type": "synthetic_visual_qa", "num_records": 40, "seed": 0}, text_budget=128,
                patches_per_row=192)
    return DataConfig(**{**base, **kw})


def _equal(a, b):
    return a["batch"].keys() == b["batch"].keys() and all(np.array_equal(a["batch"][k], b["batch"][k]) for k in a["batch"])


def test_batches_have_fixed_shapes_and_real_content(demo_setup):
    _, processor, cfg = demo_setup
    it = PackedBatches(cfg, _data(), processor, rows=2, grad_accum=2, num_groups=2, seed=0)
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
        assert len(item["record_indices"]) == 2 and sum(map(len, item["record_indices"])) == item["stats"]["samples"]
        assert all(0 <= i < 40 for group in item["record_indices"] for i in group)
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
    group = state["groups"]["0"]
    assert state["num_groups"] == 1 and state["steps"] == 3 and group["records_read"] > 0
    assert group["next_position"] == group["records_read"]  # one group reads every position
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
    # On a worker process: the skips are counted there and logged here, with the step.
    data = _data(source={"type": "jsonl", "path": str(tmp_path / "data.jsonl")}, shuffle=False, num_workers=1)
    it = PackedBatches(cfg, data, processor, rows=1, seed=0)
    item = next(it)
    it.close()
    assert item["stats"]["samples"] >= 1  # the good record is trained on
    assert set(item["record_indices"][0]) == {0}
    reasons = " | ".join(it.skipped)
    assert sum(it.skipped.values()) >= 5 and item["stats"]["skipped_records"] >= 5
    for needle in ("cannot identify image", "placeholder", "too long", "invalid JSON", "not found"):
        assert needle in reasons, (needle, reasons)
    assert "skipping bad record 1 (stream position 1): " in caplog.text


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


# ---------------------------------------------------------------------- epochs


N_RECORDS = 12


def _numbered_source(tmp_path, n=N_RECORDS):
    """A JSONL source whose record i says "record i": which record a sample came from is read
    back from its tokens, whatever machinery orders the stream."""
    path = tmp_path / "numbered.jsonl"
    if not path.exists():
        lines = [json.dumps({"messages": [{"role": "user", "content": f"record {i} ?"},
                                          {"role": "assistant", "content": "ok"}]}) for i in range(n)]
        path.write_text("\n".join(lines) + "\n")
    return {"type": "jsonl", "path": str(path)}


def _record_order(processor, cfg, source, count, group=0, num_groups=1, **kw):
    """The records of the first ``count`` samples group ``group`` reads, in reading order."""
    it = PackedBatches(cfg, _data(source=source), processor, rows=1, num_groups=num_groups, **kw)
    stream = GroupStream(it.spec, group)
    order = []
    for _ in range(count):
        _, _, sample = stream._next_sample()
        order.append(int(re.search(r"record (\d+)", processor.decode(sample.input_ids)).group(1)))
    it.close()
    return order


def test_every_epoch_is_its_own_permutation_of_all_records(demo_setup, tmp_path):
    _, processor, cfg = demo_setup
    source = _numbered_source(tmp_path)
    n = N_RECORDS
    stream = _record_order(processor, cfg, source, 3 * n, seed=7)
    epochs = [stream[e * n:(e + 1) * n] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n))  # each epoch reads every record once
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]  # ... in its own order
    assert _record_order(processor, cfg, source, 3 * n, seed=7) == stream  # a pure function of the seed
    # Deterministic in (seed, epoch), not in seed + epoch: the run with the next seed does not
    # replay this run's epochs one epoch late (grain's shuffle keys epoch e with seed + e).
    other = _record_order(processor, cfg, source, 2 * n, seed=8)
    assert other[:n] != epochs[1] and other[n:] != epochs[2] and other[:n] != epochs[0]


def test_epoch_order_is_the_documented_function(demo_setup, tmp_path):
    _, processor, cfg = demo_setup
    source = _numbered_source(tmp_path)
    stream = _record_order(processor, cfg, source, 2 * N_RECORDS, seed=3)
    order = EpochOrder(N_RECORDS, seed=3)
    assert stream == [order.locate(k)[1] for k in range(2 * N_RECORDS)]
    assert [order.locate(k)[0] for k in (0, N_RECORDS - 1, N_RECORDS, 2 * N_RECORDS)] == [0, 0, 1, 2]
    unshuffled = EpochOrder(N_RECORDS, seed=3, shuffle=False)
    assert [unshuffled.locate(k)[1] for k in range(2 * N_RECORDS)] == list(range(N_RECORDS)) * 2


@pytest.mark.parametrize("num_groups", [2, 5])
def test_groups_split_every_epoch_between_them(demo_setup, tmp_path, num_groups):
    # Group g reads global positions g, g + G, ...: per epoch, the groups' shares are disjoint and
    # cover all records (on the order itself, and through the group streams for 2 groups).
    n = N_RECORDS
    order = EpochOrder(n, seed=5)
    for epoch in range(3):
        seen = []
        for g in range(num_groups):
            seen += [j for k in range(3 * n) for e, j in [order.locate(g + k * num_groups)] if e == epoch]
        assert sorted(seen) == list(range(n))
    if num_groups == 2:
        _, processor, cfg = demo_setup
        source = _numbered_source(tmp_path)
        shares = [_record_order(processor, cfg, source, n // 2, group=g, num_groups=2, seed=5) for g in range(2)]
        assert sorted(shares[0] + shares[1]) == list(range(n))
        single = _record_order(processor, cfg, source, 2 * n, seed=5)
        assert shares[0] == single[0::2][: n // 2] and shares[1] == single[1::2][: n // 2]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_in_the_middle_of_epoch_one_continues_exactly(demo_setup, tmp_path, num_workers):
    _, processor, cfg = demo_setup
    data = _data(source=_numbered_source(tmp_path), num_workers=num_workers)
    it = PackedBatches(cfg, data, processor, rows=1, seed=11)
    while it.records_read <= N_RECORDS + 2:  # a few records into epoch 1
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    assert N_RECORDS < state["groups"]["0"]["records_read"] < 2 * N_RECORDS - 2
    want = [next(it) for _ in range(4)]  # the rest of epoch 1 and into epoch 2
    assert it.records_read > 2 * N_RECORDS
    it.close()
    again = PackedBatches(cfg, data, processor, rows=1, seed=11)
    again.set_state(state)
    got = [next(again) for _ in range(4)]
    again.close()
    assert all(_equal(w, g) for w, g in zip(want, got))


# ---------------------------------------------------------------------- over-long samples


@pytest.mark.parametrize("overlong", ["skip", "truncate"])
def test_overlong_samples_are_skipped_or_truncated_and_counted(demo_setup, tmp_path, overlong):
    _, processor, cfg = demo_setup
    (tmp_path / "small.png").write_bytes(_png())
    (tmp_path / "big.png").write_bytes(_png(size=(224, 224)))

    def llava(text, image="small.png", answer="red"):
        return json.dumps({"image": image, "conversations": [{"from": "human", "value": text},
                                                            {"from": "gpt", "value": answer}]})

    lines = [
        llava("<image>\nWhat colour?"),
        llava("<image>\nWhat colour?", answer="red " * 300),  # over the 128-token row: its tail is cut
        llava("<image><image>\nSame?", image=["big.png", "big.png"]),  # 2 x 66 vision tokens > 128
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    data = _data(source={"type": "jsonl", "path": str(tmp_path / "data.jsonl")}, shuffle=False, overlong=overlong)
    it = PackedBatches(cfg, data, processor, rows=1, seed=0)
    items = [next(it) for _ in range(3)]  # 3+ epochs of the 3 records
    stats = items[-1]["stats"]
    reasons = " | ".join(it.skipped)
    assert "truncated_records" in stats and "skipped_records" in stats
    if overlong == "skip":
        assert "too long: # tokens > the text budget #" in it.skipped and it.truncated == 0
        assert stats["truncated_records"] == 0
    else:
        assert it.truncated >= 2 and stats["truncated_records"] == it.truncated
        assert not any(r.startswith("too long:") for r in it.skipped)
        # The truncated sample fills a whole row, its image intact and part of its answer learned.
        full = [b["batch"] for b in items if b["stats"]["text_padding_fraction"] == 0]
        assert full and (full[0]["input_ids"][0, 0, 0] == cfg.image_token_id).sum() == 4
        assert (full[0]["labels"][0, 0, 0] != IGNORE_INDEX).sum() > 50
    # Vision spans alone over the budget: skipped in both modes (the reason says why).
    assert ("vision spans alone" in reasons) == (overlong == "truncate"), reasons
    assert stats["skipped_records"] == sum(it.skipped.values()) >= 1
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    again = PackedBatches(cfg, data, processor, rows=1, seed=0)
    again.set_state(state)
    assert again.truncated == it.truncated and again.skipped == it.skipped
    again.close()


def test_overlong_mode_is_validated(demo_setup):
    _, processor, cfg = demo_setup
    with pytest.raises(ValueError, match="overlong"):
        PackedBatches(cfg, _data(overlong="cut"), processor, rows=1)
