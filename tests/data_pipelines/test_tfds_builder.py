"""TF-free tfds builder: ArrayRecord round trip, storage modes, skipped records, reading back."""

import importlib.util
import io
import json
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipelines.jsonl_source import is_error
from data_pipelines.tfds_builder import ArrayRecordSource, build_array_record, open_array_record


@pytest.fixture
def no_tensorflow():
    """The test runs TensorFlow-free: TF is not imported before or after it (tfds imports it
    lazily, and only for TF features), and is not even installed, as the project requires."""
    assert "tensorflow" not in sys.modules
    yield
    assert "tensorflow" not in sys.modules
    assert importlib.util.find_spec("tensorflow") is None, "TensorFlow must not be installed here"


def png(colour, size=(9, 5)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def qa(question, answer, images=(), videos=()):
    content = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
    return {"messages": [{"role": "user", "content": [*content, {"type": "text", "text": question}]},
                         {"role": "assistant", "content": answer}],
            "images": list(images), "videos": list(videos)}


def test_round_trip_is_exact_without_tensorflow(tmp_path, no_tensorflow):
    records = [qa("Colour? ünïcödé", "red", [png((255, 0, 0))]),
               qa("Two?", "yes", [png((0, 255, 0), (3, 4)), png((0, 0, 255), (4, 3))]),
               {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2"},
                             {"role": "assistant", "content": "4"}], "images": [], "videos": []},
               qa("Bytes with NULs", "ok", [bytes(range(256)) * 3])]
    path = build_array_record(records, tmp_path, name="round_trip")
    assert path == str(tmp_path / "round_trip" / "1.0.0")
    src = open_array_record(tmp_path, "round_trip")
    assert len(src) == len(records)
    assert [src[i] for i in range(len(src))] == records  # in order, images byte-identical
    assert src.__getitems__([3, 0]) == [records[3], records[0]]
    assert src.metadata["num_written"] == 4 and src.metadata["num_skipped"] == 0
    clone = pickle.loads(pickle.dumps(src))
    assert clone._source is None and clone[1] == records[1]
    with pytest.raises(IndexError):
        src[4]


def test_in_memory_images_are_encoded_as_png(tmp_path):
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    records = [qa("pil", "a", [Image.fromarray(pixels)]), qa("array", "b", [pixels])]
    build_array_record(records, tmp_path, "in_memory")
    src = open_array_record(tmp_path, "in_memory")
    for i in range(2):
        decoded = np.asarray(Image.open(io.BytesIO(src[i]["images"][0])))
        np.testing.assert_array_equal(decoded, pixels)


def write_jsonl(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png((1, 2, 3)))
    (tmp_path / "clip.mp4").write_bytes(b"fake video")
    lines = [
        json.dumps({"image": "img/a.png", "conversations": [{"from": "human", "value": "<image>What?"},
                                                             {"from": "gpt", "value": "dark"}]}),
        "{broken",
        json.dumps({"image": "img/missing.png", "conversations": [{"from": "human", "value": "<image>?"},
                                                                   {"from": "gpt", "value": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"},
                                                              {"type": "text", "text": "Moving?"}]},
                                 {"role": "assistant", "content": "yes"}]}),
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_bytes_mode_skips_and_counts_bad_records(tmp_path, no_tensorflow):
    jsonl = write_jsonl(tmp_path)
    build_array_record(jsonl, tmp_path / "tfds", name="sft")
    src = open_array_record(tmp_path / "tfds", "sft")
    assert len(src) == 2  # the broken line and the missing image are skipped
    assert src[0]["images"] == [(tmp_path / "img" / "a.png").read_bytes()]
    assert src[1]["videos"] == [str(tmp_path / "clip.mp4")]  # videos default to paths
    meta = src.metadata
    assert meta["num_skipped"] == 2 and meta["store_images"] == "bytes"
    assert "invalid JSON" in meta["skip_reasons"][0] and "missing.png" in meta["skip_reasons"][1]

    build_array_record(jsonl, tmp_path / "tfds", name="sft_paths", store_images="paths", store_videos="bytes")
    paths = open_array_record(tmp_path / "tfds", "sft_paths")
    assert len(paths) == 3  # a missing file is only found missing when its bytes are read
    assert paths[0]["images"] == [str(tmp_path / "img" / "a.png")]
    assert paths[2]["videos"] == [b"fake video"]

    with pytest.raises(ValueError, match="record 1"):
        build_array_record(jsonl, tmp_path / "tfds", name="strict", on_error="raise")


def test_if_exists_and_relative_paths_and_frames(tmp_path):
    records = [qa("rel", "x", ["pics/p.png"], videos=[["f0.png", "f1.png"]])]
    with pytest.raises(ValueError, match="snake_case"):
        build_array_record(records, tmp_path, name="Bad-Name")
    build_array_record(records, tmp_path, name="rel", store_images="paths")
    src = open_array_record(tmp_path, "rel", image_root="/root")
    assert src[0]["images"] == ["/root/pics/p.png"] and src[0]["videos"] == [["/root/f0.png", "/root/f1.png"]]
    assert open_array_record(tmp_path, "rel")[0]["images"] == ["pics/p.png"]
    with pytest.raises(FileExistsError):
        build_array_record(records, tmp_path, name="rel")
    assert build_array_record([], tmp_path, name="rel", if_exists="reuse").endswith("rel/1.0.0")
    assert len(open_array_record(tmp_path, "rel")) == 1
    build_array_record(records * 3, tmp_path, name="rel", if_exists="overwrite", store_images="paths")
    assert len(ArrayRecordSource(tmp_path, "rel")) == 3
    with pytest.raises(FileNotFoundError):
        open_array_record(tmp_path, "nothing_here")


def test_tfds_data_source_reads_it_too(tmp_path):
    import tensorflow_datasets as tfds

    build_array_record([qa("q", "a", [png((5, 5, 5))])], tmp_path, name="by_tfds_name")
    ds = tfds.data_source("by_tfds_name", data_dir=str(tmp_path), split="train", download=False)
    example = ds[0]
    assert json.loads(example["messages"])[1]["content"] == "a"
    assert bytes(example["images"][0]) == png((5, 5, 5))


def test_a_failing_source_record_is_skipped_not_fatal(tmp_path):
    class Flaky:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            if i == 1:
                raise RuntimeError("corrupt shard")
            return qa(f"q{i}", "a")

    build_array_record(Flaky(), tmp_path, name="flaky")
    src = open_array_record(tmp_path, "flaky")
    assert [src[i]["messages"][0]["content"][-1]["text"] for i in range(len(src))] == ["q0", "q2"]
    assert "corrupt shard" in src.metadata["skip_reasons"][0]
    assert not any(is_error(src[i]) for i in range(len(src)))
