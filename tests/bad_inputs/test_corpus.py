"""The bad-input corpus: every row of the table in docs/bad_inputs.md is a test.

The table is the source of the expectations (outcome and exact message); bad_input_cases.py
only says how each row's input is made. Messages are compared whole, after writing the case's
temporary directory as ``$TMP``, the session's shared one as ``$SHARED`` and the checkout as
``$REPO``; ``…`` in a message stands for any text (a device count, a library's own wording),
``\\n`` for a line break, ``\\|`` for ``|``. A command-line row also checks that stderr holds no
traceback: only progress lines (``[convert] ...``) may come before the error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
from bad_input_cases import CASES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "bad_inputs.md"
ROW = re.compile(r"^\|\s*`(?P<id>[a-z0-9-]+)`\s*\|")
CELL_SPLIT = re.compile(r"(?<!\\)\|")


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    entry: str
    bad_input: str
    outcome: str
    message: str


def _cell(text: str) -> str:
    text = text.strip()
    if text.startswith("`") and text.endswith("`"):
        text = text.strip("`").strip()
    return text.replace("\\|", "|")


def read_rows(doc: Path = DOC) -> list[Row]:
    rows = []
    for line in doc.read_text(encoding="utf-8").splitlines():
        if ROW.match(line):
            cells = [_cell(c) for c in CELL_SPLIT.split(line.strip())[1:-1]]
            assert len(cells) == 5, f"a corpus row has 5 cells: {line}"
            rows.append(Row(*cells))
    return rows


ROWS = read_rows()


def normalise(text: str, tmp: Path, shared: Path) -> str:
    for path, name in ((tmp, "$TMP"), (shared, "$SHARED"), (ROOT, "$REPO")):
        for form in {str(path.resolve()), str(path)}:
            text = text.replace(form, name)
    return text.replace("\n", "\\n")


def pattern(message: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in message.split("…")), re.DOTALL)


def test_the_table_and_the_producers_agree():
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert set(ids) == set(CASES), {"rows without a producer": sorted(set(ids) - set(CASES)),
                                    "producers without a row": sorted(set(CASES) - set(ids))}
    assert len(ROWS) >= 40
    # Every entry point named in the task is covered.
    prefixes = {i.split("-")[0] for i in ids}
    assert {"recipe", "cli", "process", "config", "st", "native", "train", "image", "video", "tokenizer",
            "jsonl", "llava", "hf", "canonical", "gen", "chat"} <= prefixes
    assert all(row.outcome for row in ROWS) and all(row.message for row in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row: Row, tmp_path: Path, runner, resources):
    produce = CASES[row.id]
    try:
        result = produce(tmp_path, runner)
    except Exception as e:  # noqa: BLE001 - the exception IS the outcome under test
        outcome, message = type(e).__name__, str(e)
    else:
        assert result is not None, f"{row.id}: no error"
        outcome, message = result
    message = normalise(message, tmp_path, resources.root)
    if os.environ.get("BAD_INPUTS_RECORD"):  # a maintainer's aid: collect what the rows produce
        with open(os.environ["BAD_INPUTS_RECORD"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": row.id, "outcome": outcome, "message": message}) + "\n")
    assert outcome == row.outcome, f"{row.id}: {outcome}: {message}"
    assert pattern(row.message).fullmatch(message), f"{row.id}:\n  table:  {row.message}\n  actual: {message}"
