"""One training process tree per run directory: ``run_dir/.lock`` names its owner.

The lock file holds ``{"host", "pid", "heartbeat"}``; process 0 takes it (the other processes of
a multi-host run share it) and refreshes the heartbeat as it trains. A second ``train`` on the
same directory refuses, naming the owner. A lock is stale, and is taken over with a message,
when its owner is gone: on the same host, no process with that pid is alive; on another host
(a shared filesystem), its heartbeat is older than ``stale_after_s``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK = ".lock"


class RunLocked(ValueError):
    """Another process trains this run directory (a user error: exit status 2)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: str | os.PathLike, *, stale_after_s: float = 3600.0, say=print):
        self.path = Path(run_dir) / LOCK
        self.stale_after_s = stale_after_s
        self.say = say
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.held = False

    def _record(self) -> dict:
        return {"host": self.host, "pid": self.pid, "heartbeat": time.time()}

    def _stale_reason(self, owner: dict) -> str | None:
        if owner.get("host") == self.host:
            return None if _alive(int(owner.get("pid", -1))) else f"pid {owner.get('pid')} is not running"
        age = time.time() - float(owner.get("heartbeat", 0))
        return f"no heartbeat for {age:.0f} s" if age > self.stale_after_s else None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                why = self._stale_reason(owner) if owner else "the lock file is empty"
                if why is None:
                    raise RunLocked(f"{self.path.parent} is being trained by pid {owner.get('pid')} on host "
                                    f"{owner.get('host')} (lock {self.path}); wait for it, or remove the "
                                    "lock if that run is really gone") from None
                self.say(f"taking over the stale lock of pid {owner.get('pid')} on {owner.get('host')} ({why})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            self.held = True
            return
        raise RunLocked(f"could not take the lock {self.path}")

    def heartbeat(self) -> None:
        if self.held:
            tmp = self.path.with_name(LOCK + ".tmp")
            tmp.write_text(json.dumps(self._record()))
            os.replace(tmp, self.path)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
