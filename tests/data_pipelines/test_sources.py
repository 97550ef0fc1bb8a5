"""open_source: every registered type from a spec dict, strict keys, nesting, extension."""

import json

import pytest

from data_pipelines import sources as sources_mod
from data_pipelines import synthetic
from data_pipelines.jsonl_source import JsonlSource
from data_pipelines.mixture import Mixture, source_of
from data_pipelines.sources import SOURCE_TYPES, open_source, register_source_type
from data_pipelines.tfds_builder import ArrayRecordSource, build_array_record

TEXT = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
LLAVA = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>Hi"},
                                              {"from": "gpt", "value": "Hello"}]}


@pytest.fixture
def data(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"png")
    (tmp_path / "llava.jsonl").write_text(json.dumps(LLAVA) + "\n")
    (tmp_path / "text.jsonl").write_text("\n".join([json.dumps(TEXT)] * 5) + "\n")
    build_array_record([{**TEXT, "images": [], "videos": []}] * 3, tmp_path / "tfds", name="chat")
    return tmp_path


def test_jsonl_and_array_record(data):
    src = open_source({"type": "jsonl", "path": str(data / "llava.jsonl"), "image_root": str(data / "imgs"),
                       "format": "llava"})
    assert isinstance(src, JsonlSource) and src[0]["images"] == [str(data / "imgs" / "a.png")]
    rel = open_source({"type": "jsonl", "path": "llava.jsonl", "image_root": "imgs"}, base_dir=data)
    assert rel[0] == src[0]
    ar = open_source({"type": "array_record", "data_dir": "tfds", "name": "chat"}, base_dir=data)
    assert isinstance(ar, ArrayRecordSource) and len(ar) == 3 and ar[0]["messages"] == TEXT["messages"]


def test_synthetic_types():
    assert hasattr(synthetic, SOURCE_TYPES["synthetic_visual_qa"].attr)
    for type_name in ("synthetic_visual_qa",):
        src = open_source({"type": type_name, "num_records": 7, "seed": 2})
        assert len(src) == 7 and src[3] == open_source({"type": type_name, "num_records": 7, "seed": 2})[3]
        with pytest.raises(ValueError, match="'num_record'"):
            open_source({"type": type_name, "num_record": 7})


def test_mixture_spec(data):
    spec = {"type": "mixture", "weights": [0.75, 0.25], "seed": 1, "names": ["llava", "text"],
            "sources": [{"type": "jsonl", "path": "llava.jsonl", "image_root": "imgs"},
                        {"type": "mixture", "sources": [{"type": "jsonl", "path": "text.jsonl"},
                                                        {"type": "array_record", "data_dir": "tfds",
                                                         "name": "chat"}]}]}
    mix = open_source(spec, base_dir=data)
    assert isinstance(mix, Mixture) and mix.names == ("llava", "text")
    names = {source_of(mix[i]) for i in range(len(mix))}
    assert names == {"llava", "text/text", "text/chat"}


def test_errors_name_the_key(data):
    with pytest.raises(ValueError, match="unknown source type 'jsonx'"):
        open_source({"type": "jsonx", "path": "x"})
    with pytest.raises(ValueError, match="no 'type' key"):
        open_source({"path": "x"})
    with pytest.raises(ValueError, match="jsonl source: unknown key 'pth'"):
        open_source({"type": "jsonl", "pth": "x"})
    with pytest.raises(ValueError, match="missing required key 'path'"):
        open_source({"type": "jsonl"})
    with pytest.raises(ValueError, match="base_dir"):  # injected, never a spec key
        open_source({"type": "jsonl", "path": "x", "base_dir": "/"})
    with pytest.raises(ValueError, match=r"mixture sources\[1\]: array_record source: unknown key 'dir'"):
        open_source({"type": "mixture", "sources": [{"type": "jsonl", "path": str(data / "text.jsonl")},
                                                    {"type": "array_record", "dir": "x", "name": "y"}]})
    with pytest.raises(ValueError, match="mapping"):
        open_source(["jsonl"])


def test_register_a_new_type(monkeypatch):
    monkeypatch.setattr(sources_mod, "SOURCE_TYPES", dict(SOURCE_TYPES))

    class Letters:
        def __init__(self, letters=("a", "b"), repeat=1):
            self.items = list(letters) * repeat

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return {"messages": [{"role": "user", "content": self.items[i]}], "images": [], "videos": []}

    register_source_type("letters", Letters)
    src = open_source({"type": "letters", "letters": ["x", "y", "z"]})  # a YAML list becomes a tuple
    assert src.items == ["x", "y", "z"] and len(src) == 3
    with pytest.raises(ValueError, match="already registered"):
        register_source_type("letters", Letters)
    register_source_type("letters", Letters, replace=True)
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        open_source({"type": "letters", "colour": "red"})
