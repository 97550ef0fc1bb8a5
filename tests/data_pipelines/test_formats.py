"""Record importers and validation (pure Python)."""

from data_pipelines.formats import from_hf_content, from_llava, validate


def test_llava_import_and_validation(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    rec = from_llava({"image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]})
    assert rec["images"] == ["a.jpg"]
    assert rec["messages"][0] == {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}
    assert rec["messages"][1]["content"] == [{"type": "text", "text": "A cat."}]
    assert validate(rec, root=tmp_path) == []
    assert validate(rec, root=tmp_path / "elsewhere") == [f"image file not found: {tmp_path / 'elsewhere' / 'a.jpg'}"]


def test_hf_content_import():
    rec = from_hf_content({"messages": [
        {"role": "user", "content": [{"type": "image", "image": "https://x/a.jpg"}, {"type": "video", "video": "v.mp4"},
                                     {"type": "text", "text": "Compare."}]},
        {"role": "assistant", "content": "Same."}]})
    assert rec["images"] == ["https://x/a.jpg"] and rec["videos"] == ["v.mp4"]
    assert rec["messages"][0]["content"][:2] == [{"type": "image"}, {"type": "video"}]


def test_every_rejection_has_a_reason():
    assert validate({"messages": []}) == ["no messages"]
    two_users = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    reasons = validate(two_users)
    assert "roles must alternate user/assistant; got 'user' then 'user' at turn 1" in reasons
    assert "no assistant message to learn from" in reasons
    missing = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]},
                            {"role": "assistant", "content": "x"}], "images": ["https://a"]}
    assert validate(missing) == ["2 image placeholder(s) but 1 images"]
