"""Everything under tests/parity compares with transformers==4.57.6 (the [parity] extra).

Without torch/transformers each test file here is reported as SKIPPED with the reason (the rest
of the suite still runs). Only a missing module (ModuleNotFoundError) skips: an installed but
broken torch or transformers fails collection with its own error.
"""

import functools
import importlib

import pytest

PARITY_EXTRA = "needs the [parity] extra: torch==2.13.0 and transformers==4.57.6"


@functools.cache
def _missing_parity_extra() -> str | None:
    """The skip reason, or None when both import (imported at collection, not at conftest load,
    so a broken install is a collection error of these files, not of the whole session)."""
    for name in ("torch", "transformers"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            return f"{PARITY_EXTRA} ({e})"
    return None


class _SkippedModule(pytest.Module):
    """A test file that is not imported (its imports need the extra); collecting it skips."""

    def collect(self):
        pytest.skip(_missing_parity_extra(), allow_module_level=True)


def pytest_pycollect_makemodule(module_path, parent):
    if _missing_parity_extra() is not None:
        return _SkippedModule.from_parent(parent, path=module_path)
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/parity/" in str(item.fspath):
            item.add_marker(pytest.mark.parity)
