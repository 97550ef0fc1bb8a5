"""Everything under tests/parity compares with transformers==4.57.6 (the [parity] extra)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/parity/" in str(item.fspath):
            item.add_marker(pytest.mark.parity)
