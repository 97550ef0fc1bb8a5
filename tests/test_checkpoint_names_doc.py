"""docs/checkpoint_names.md holds exactly the tables that tools/checkpoint_names_table.py generates
from ``build_rules``, so the page cannot drift from the name mapping."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "checkpoint_names_table.py"
DOC = ROOT / "docs" / "checkpoint_names.md"


def _tool():
    spec = importlib.util.spec_from_file_location("checkpoint_names_table", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doc_contains_the_generated_tables():
    tables = _tool().markdown()
    doc = DOC.read_text(encoding="utf-8")
    assert tables in doc, (
        "docs/checkpoint_names.md is out of date: replace its generated tables with the output of "
        "`python tools/checkpoint_names_table.py`"
    )


def test_tied_2b_has_no_lm_head_and_untied_7b_adds_only_it():
    tables = _tool().markdown()
    tied, untied = tables.split("Only in checkpoints with untied embeddings")
    assert "`lm_head" not in tied
    patch_embed = ("| `visual.patch_embed.proj.weight` | `visual/patch_embed` | reshape, transpose "
                   "| [1280, 3, 2, 14, 14] | [1176, 1280] |")
    assert patch_embed in tied
    rows = [line for line in untied.splitlines() if line.startswith("| `")]
    assert rows == ["| `lm_head.weight` | `lm_head` | transpose | [152064, 3584] | [3584, 152064] |"]
