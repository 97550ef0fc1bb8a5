"""Nothing a user hands us (checkpoints, data, configs) is ever unpickled.

The library's source is parsed (not imported) and every call that can unpickle is found:
``pickle`` / ``cPickle`` / ``dill`` / ``joblib`` / ``cloudpickle`` loads, ``torch.load`` without
``weights_only=True``, ``np.load`` without ``allow_pickle=False``, ``pandas.read_pickle``,
``shelve``, ``marshal``. The allowed calls are the data workers' (and their read-ahead helpers') ``pickle.loads`` of
the job their own parent process serialised for them (never bytes from a file).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = [p for d in ("qwen2vl_jax", "data_pipelines") for p in sorted((ROOT / d).rglob("*.py"))]
# (file, call): the only unpickling allowed, with the reason.
ALLOWED = {("data_pipelines/workers.py", "pickle.loads"):
           "the job payload the parent process pickled for its own spawned worker, sent over a pipe",
           ("data_pipelines/read_ahead.py", "pickle.loads"):
           "the read spec a packing worker pickled for its own spawned read-ahead helper"}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
LOADERS = {"load", "loads", "Unpickler", "open"}


def _name(node: ast.AST) -> str:
    """``a.b.c`` of an attribute chain (empty for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unpickling_calls(source: str) -> list[tuple[int, str, str]]:
    """(line, call, why) of every call in ``source`` that may unpickle."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> module, from the imports
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        head, _, rest = name.partition(".")
        full = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)
        module, _, func = full.rpartition(".")
        unpickles = (module.split(".")[0] in PICKLE_MODULES and func in LOADERS) or func == "read_pickle"
        if unpickles or full == "torch.serialization.load":
            found.append((node.lineno, name, "unpickles"))
        elif full == "torch.load" and not _is_const(_keyword(node, "weights_only"), True):
            found.append((node.lineno, name, "torch.load without weights_only=True"))
        elif full in ("numpy.load", "np.load") and not _is_const(_keyword(node, "allow_pickle"), False):
            found.append((node.lineno, name, "np.load without allow_pickle=False"))
    return found


def test_the_scanner_finds_what_it_looks_for():
    bad = """
import pickle, torch
import numpy as np
from pickle import loads as unpickle
import joblib
pickle.load(f); unpickle(b); torch.load(p); torch.load(p, weights_only=False); np.load(p)
np.load(p, allow_pickle=True); joblib.load(p)
"""
    good = "import numpy as np, torch, pickle\nnp.load(p, allow_pickle=False)\ntorch.load(p, weights_only=True)\n" \
           "pickle.dumps(x)\n"
    assert [c[1] for c in unpickling_calls(bad)] == ["pickle.load", "unpickle", "torch.load", "torch.load",
                                                      "np.load", "np.load", "joblib.load"]
    assert unpickling_calls(good) == []


def test_no_library_module_unpickles():
    assert len(LIBRARY) > 50  # the scan sees the package
    found = {}
    for path in LIBRARY:
        rel = path.relative_to(ROOT).as_posix()
        calls = [(line, call, why) for line, call, why in unpickling_calls(path.read_text(encoding="utf-8"))
                 if (rel, call) not in ALLOWED]
        if calls:
            found[rel] = calls
    assert found == {}


def test_no_source_enables_pickling_in_text():
    """Also a plain text scan, so a call built in a way the AST scan misses still shows."""
    for path in LIBRARY:
        text = path.read_text(encoding="utf-8")
        assert "allow_pickle=True" not in text, path
        assert "weights_only=False" not in text, path


def test_the_allowed_unpickling_is_only_the_workers_job():
    # The exception covers that one call: any other unpickling in the same file is reviewed anew.
    for (rel, call), why in ALLOWED.items():
        path = ROOT / rel
        calls = [c for _, c, _ in unpickling_calls(path.read_text(encoding="utf-8"))] if path.exists() else []
        assert set(calls) <= {call} and len(calls) <= 1, (rel, calls, why)
