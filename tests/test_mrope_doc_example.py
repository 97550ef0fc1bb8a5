"""The worked example of docs/mrope.md, read from the page itself: our get_rope_index must print
exactly its rows (and, with the [parity] extra, so must transformers 4.57.6)."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from qwen2vl_jax.layout import get_rope_index

DOC = Path(__file__).resolve().parents[1] / "docs" / "mrope.md"
VS, VE, IMG, VID, PAD, T = 150, 153, 151, 152, 0, 7
TOKENS = {"pad": PAD, "T": T, "<vs>": VS, "<ve>": VE, "I": IMG, "V": VID}


def _example() -> dict:
    blocks = re.findall(r"```text\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    block = next(b for b in blocks if "image_grid_thw" in b)
    rows = {}
    for line in block.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            rows[key.strip()] = value.strip()
        elif line.strip():
            label, *cells = line.split()
            rows[label] = cells
    return {
        "input_ids": np.array([[TOKENS[c] for c in rows["token"]]]),
        "attention_mask": np.array([[int(c) for c in rows["mask"]]]),
        "image_grid_thw": ast.literal_eval(rows["image_grid_thw"]),
        "video_grid_thw": ast.literal_eval(rows["video_grid_thw"]),
        "spatial_merge_size": int(rows["spatial_merge_size"]),
        "positions": [[int(c) for c in rows[k]] for k in ("temporal", "height", "width")],
        "rope_delta": int(rows["rope_delta"].rsplit("=", 1)[-1]),
        "index": [int(c) for c in rows["index"]],
    }


def test_doc_example_is_well_formed():
    ex = _example()
    n = ex["input_ids"].shape[1]
    assert ex["index"] == list(range(n)) and all(len(r) == n for r in ex["positions"])
    # The placeholder runs are as long as the merged grids say (6 image, 4 video tokens).
    m2 = ex["spatial_merge_size"] ** 2
    for token, grids, count in ((IMG, ex["image_grid_thw"], 6), (VID, ex["video_grid_thw"], 4)):
        assert int((ex["input_ids"] == token).sum()) == sum(int(np.prod(g)) // m2 for g in grids) == count


def test_our_get_rope_index_prints_the_doc_rows():
    ex = _example()
    pos, delta = get_rope_index(
        ex["input_ids"], ex["image_grid_thw"], ex["video_grid_thw"], ex["attention_mask"],
        spatial_merge_size=ex["spatial_merge_size"], image_token_id=IMG, video_token_id=VID,
        vision_start_token_id=VS)
    assert pos[:, 0].tolist() == ex["positions"]
    assert delta.tolist() == [[ex["rope_delta"]]]
    # The first generated token continues at max + 1: slot S, position S + delta.
    assert ex["input_ids"].shape[1] + ex["rope_delta"] == max(map(max, ex["positions"])) + 1


@pytest.mark.parity
def test_transformers_prints_the_doc_rows():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    ex = _example()
    cfg = transformers.Qwen2VLConfig(
        text_config={"vocab_size": 160, "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}},
        vision_config={"depth": 1, "embed_dim": 16, "num_heads": 2, "hidden_size": 16,
                       "spatial_merge_size": ex["spatial_merge_size"]},
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS,
    )
    pos, delta = Qwen2VLModel(cfg).get_rope_index(
        torch.tensor(ex["input_ids"]), torch.tensor(ex["image_grid_thw"]), torch.tensor(ex["video_grid_thw"]),
        torch.tensor(ex["attention_mask"]))
    assert pos[:, 0].tolist() == ex["positions"]
    assert delta.tolist() == [[ex["rope_delta"]]]
