"""JsonlSource: formats, path resolution, the `_error` convention, the line index, pickling."""

import json
import os
import pickle

import pytest

from data_pipelines.formats import validate
from data_pipelines.jsonl_source import ERROR_KEY, JsonlSource, _index_lines, detect_format, is_error

LLAVA = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                              {"from": "gpt", "value": "A square."}]}
HF = {"messages": [{"role": "user", "content": [{"type": "image", "image": "sub/b.png"},
                                                {"type": "text", "text": "Colour?"}]},
                   {"role": "assistant", "content": "red"}]}
CANONICAL = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
                          {"role": "assistant", "content": "Hello"}],
             "images": ["/abs/c.png"], "videos": []}
TEXT_ONLY = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def write_lines(path, lines, newline="\n", trailing=True):
    text = newline.join(lines) + (newline if trailing else "")
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.fixture
def images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "sub/b.png"):
        (tmp_path / name).write_bytes(b"not really a png")
    return tmp_path


def test_llava_hf_canonical_and_text_only_in_one_file(images):
    path = write_lines(images / "d.jsonl", [json.dumps(r) for r in (LLAVA, HF, CANONICAL, TEXT_ONLY)])
    src = JsonlSource(path)
    assert len(src) == 4
    llava, hf, canonical, text = (src[i] for i in range(4))
    assert llava["images"] == [str(images / "a.png")]  # resolved against the JSONL's folder
    assert llava["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "What is it?"}]
    assert validate(llava) == []
    assert hf["images"] == [str(images / "sub" / "b.png")]
    assert hf["messages"][0]["content"][0] == {"type": "image"}
    assert validate(hf) == []
    assert canonical["images"] == ["/abs/c.png"]  # absolute paths are kept
    assert text == {**TEXT_ONLY, "images": [], "videos": []}
    assert [detect_format(r) for r in (LLAVA, HF, CANONICAL, TEXT_ONLY)] == ["llava", "hf", "canonical",
                                                                           "canonical"]


def test_explicit_format_and_image_root(tmp_path, images):
    path = write_lines(tmp_path / "elsewhere.jsonl", [json.dumps(LLAVA)])
    src = JsonlSource(path, image_root=images, format="llava")
    assert src[0]["images"] == [os.path.join(str(images), "a.png")]
    # the same line read as canonical has no 'messages': an error record, not an exception
    bad = JsonlSource(path, format="canonical")[0]
    assert is_error(bad) and "no 'messages'" in bad[ERROR_KEY]
    with pytest.raises(ValueError, match="unknown format"):
        JsonlSource(path, format="sharegpt")


def test_bad_lines_become_error_records_with_line_numbers(tmp_path):
    lines = [json.dumps(TEXT_ONLY), "", "{not json", "   ", json.dumps([1, 2]), json.dumps(TEXT_ONLY),
             json.dumps({"messages": [{"role": "user", "content": [{"type": "image"}]}]})]
    src = JsonlSource(write_lines(tmp_path / "d.jsonl", lines), format="hf")
    assert len(src) == 5  # blank lines are not records
    records = [src[i] for i in range(len(src))]
    assert [is_error(r) for r in records] == [False, True, True, False, True]
    assert records[1][ERROR_KEY].startswith(f"{src.path}:3: invalid JSON")
    assert records[2][ERROR_KEY].startswith(f"{src.path}:5: cannot import")
    assert "got list" in records[2][ERROR_KEY]
    assert "image entry must be a path" in records[4][ERROR_KEY]  # hf image item without a source
    assert validate(records[1]) == ["no messages"]  # safe even if a consumer ignores _error
    assert [src.line_number(i) for i in range(5)] == [1, 3, 5, 6, 7]
    with pytest.raises(IndexError):
        src[5]


def test_crlf_no_trailing_newline_and_non_utf8(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(TEXT_ONLY)] * 2, newline="\r\n", trailing=False)
    src = JsonlSource(path)
    assert len(src) == 2 and src[1]["messages"] == TEXT_ONLY["messages"]
    raw = tmp_path / "latin.jsonl"
    raw.write_bytes(b'{"messages": "caf\xe9"}\n')
    assert "not UTF-8" in JsonlSource(raw)[0][ERROR_KEY]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 1 << 20])
def test_line_index_is_independent_of_chunking(tmp_path, chunk_size):
    content = b'{"a": 1}\n\n  \n{"b": "x y"}\r\n\t\n{"c": [1, 2, 3]}\n{"d": 4}'
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    starts, ends, numbers = _index_lines(str(path), chunk_size=chunk_size)
    lines = [content[s:e] for s, e in zip(starts, ends)]
    assert [line.strip() for line in lines] == [b'{"a": 1}', b'{"b": "x y"}', b'{"c": [1, 2, 3]}',
                                                b'{"d": 4}']
    assert list(numbers) == [1, 4, 6, 7]


def test_pickle_and_reads_after_unpickling(tmp_path, images):
    path = write_lines(images / "d.jsonl", [json.dumps(LLAVA), "oops", json.dumps(HF)])
    src = JsonlSource(path)
    before = [src[i] for i in range(3)]  # opens the file handle
    clone = pickle.loads(pickle.dumps(src))
    assert clone._fd is None
    assert [clone[i] for i in range(3)] == before
    assert clone.__getitems__([2, 0]) == [before[2], before[0]]
