"""The repository cites only what its readers can open.

No tracked file may cite sections of a private spec, paths outside the checkout, internal design
notes, or an internal "issue N" numbering. Cite the reference implementation (transformers,
qwen-vl-utils), the paper, a vendor page, or a page under docs/ instead. Every ``docs/<name>.md``
named anywhere must exist, and so must every relative ``.md`` link inside docs/.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The patterns are assembled from pieces, so that this file does not match itself.
BANNED = re.compile(
    "|".join([
        r"spec\s*\(?\s*" + "\u00a7",  # "spec" followed by a section sign, also "spec (" + sign
        re.escape("../" + "shared"),
        "JAX_" + "NOTES",
        re.escape("ARCHITECTURE" + ".md"),
        "PERF_" + "ANCHORS",
        "JAX_" + "PEERS",
        re.escape("ABLATIONS" + ".md"),
        # Internal numbering: the word issue followed by a number (see the samples below). A real
        # tracker reference ("GitHub issue #4476") and the plain English word stay allowed.
        r"\bissues?\s+\d",
    ]),
    re.IGNORECASE,
)
DOC_PATH = re.compile(r"(?<![\w./-])docs/([\w.-]+\.md)\b")
MD_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")

def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False)
    except OSError:
        pytest.skip("git is not installed")
    if out.returncode != 0 or not out.stdout:
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.stdout.decode("utf-8", "surrogateescape").split("\0") if name]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary, unreadable or (locally) deleted file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _violations(text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for m in BANNED.finditer(line):
            found.append(f"{number}: {m.group(0)!r} in {line.strip()[:120]!r}")
    return found


def _scan(paths) -> dict[str, list[str]]:
    bad = {}
    for path in paths:
        text = _text(path)
        if text is not None and (hits := _violations(text)):
            bad[str(path.relative_to(ROOT))] = hits
    return bad


def test_the_patterns_can_fail():
    # Samples are assembled so that this file does not contain them.
    sec = "\u00a7"
    for bad in ("see spec " + sec + "4.2", "Spec " + sec + "10", "the spec (" + sec + "9.2)",
                "(issue " + "5)", "issue " + "4 item 4", "Issue " + "12", "issues " + "3 and 4",
                "../" + "shared/design", "JAX_" + "NOTES", "ARCHITECTURE" + ".md", "PERF_" + "ANCHORS",
                "JAX_" + "PEERS", "ABLATIONS" + ".md"):
        assert _violations(bad), bad
    for fine in ("MaxText's cuDNN path (its GitHub issue #4476)", "the issue is that", "tissue 3",
                 "arXiv 2409.12191, " + sec + "2.2", "docs/numerics.md", "architecture ablations",
                 "qwen2vl_jax/config/architecture.py", "issue tracking systems"):
        assert not _violations(fine), fine
    assert DOC_PATH.findall("see docs/mrope.md, and (docs/numerics.md).") == ["mrope.md", "numerics.md"]
    assert DOC_PATH.findall("docs/pallas/CHANGELOG.md, cloud.google.com/tpu/docs/v4.md, docs/*.md") == []
    assert MD_LINK.findall("[a](mrope.md) [b](numerics.md#rmsnorm) [c](https://x.org/y.md)") == [
        "mrope.md", "numerics.md", "https://x.org/y.md"]


def test_no_outside_references():
    bad = _scan(_tracked_files())
    assert not bad, "outside references (cite the reference implementation or a docs/ page):\n" + "\n".join(
        f"  {name}:{hit}" for name, hits in sorted(bad.items()) for hit in hits)


def test_every_docs_page_named_exists():
    missing = []
    for path in _tracked_files():
        text = _text(path)
        if text is None:
            continue
        name = path.relative_to(ROOT).as_posix()
        for page in DOC_PATH.findall(text):
            if not (ROOT / "docs" / page).is_file():
                missing.append(f"{name}: docs/{page}")
        if name.startswith("docs/") and name.endswith(".md"):
            for link in MD_LINK.findall(text):
                if "://" not in link and not (path.parent / link).is_file():
                    missing.append(f"{name}: link {link}")
    assert not missing, "named docs pages that do not exist:\n" + "\n".join(f"  {m}" for m in missing)
