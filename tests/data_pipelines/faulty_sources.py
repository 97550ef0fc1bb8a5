"""Sources that fail on purpose inside a data worker (a helper module, not tests: a spawned worker
imports it to unpickle the source, so it stays light)."""

from __future__ import annotations

import os
import time

from data_pipelines.synthetic import SyntheticVisualQA


class FaultySource(SyntheticVisualQA):
    """The synthetic task, except that reading record ``at`` kills the process (``crash``: exit
    code 7, like a native crash), raises (``raise``) or stalls (``stall``: sleeps 60 s)."""

    def __init__(self, num_records: int = 40, seed: int = 0, at: int = 5, fault: str = "raise"):
        super().__init__(num_records=num_records, seed=seed)
        self.at, self.fault = at, fault

    def __getitem__(self, index: int) -> dict:
        if int(index) == self.at:
            if self.fault == "crash":
                os._exit(7)
            if self.fault == "stall":
                time.sleep(60)
            raise OSError(f"disk gone while reading record {index}")
        return super().__getitem__(index)


class AllBadSource(SyntheticVisualQA):
    """The synthetic task with every record's image missing: nothing is usable."""

    def __getitem__(self, index: int) -> dict:
        record = dict(super().__getitem__(index))
        record["images"] = ["/nonexistent/picture.png"] * len(record.get("images") or [1])
        return record
