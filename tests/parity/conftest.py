"""Everything under tests/parity compares with transformers==4.57.6 (the [parity] extra).

Without torch/transformers these tests are not collected (the rest of the suite still runs).
"""

import importlib.util

import pytest

collect_ignore_glob = (
    ["test_*.py"]
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None
    else []
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/parity/" in str(item.fspath):
            item.add_marker(pytest.mark.parity)
