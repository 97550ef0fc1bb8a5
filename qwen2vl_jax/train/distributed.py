"""Multi-controller start-up: ``jax.distributed.initialize`` before anything touches a device.

* Explicitly: ``--coordinator HOST:PORT --num-processes N --process-id I`` (all three together),
  e.g. several processes on one machine or hosts without a scheduler.
* Automatically: on a multi-host Cloud TPU slice (the TPU VM's metadata names several workers)
  or inside a SLURM job of several tasks, JAX's own cluster detection finds the coordinator
  (``jax.distributed.initialize()`` with no arguments; JAX doc "Multi-host and multi-process").
* Otherwise: one process, nothing to initialise.

CPU processes talk through gloo (``jax_cpu_collectives_implementation``), so the same commands
run a real multi-process program on loopback; it has no effect on TPU or GPU.
"""

from __future__ import annotations

import os

import jax


def _cluster_detected() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start JAX's distributed runtime if this is one process of several; returns whether it did.

    ``ValueError`` for an incomplete or inconsistent explicit setting (a user error: exit 2)."""
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(f"{', '.join(given)} go together; missing {', '.join(missing)}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id must be in [0, {num_processes}) and --num-processes >= 1; "
                             f"got {process_id} of {num_processes}")
        if ":" not in coordinator:
            raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        if num_processes == 1:
            return False
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if _cluster_detected():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize()
        return True
    return False


def process_label() -> str:
    """``"process 2/4: "`` in a multi-process run (error messages name their process), else ""."""
    try:
        count = jax.process_count()
    except RuntimeError:
        return ""
    return f"process {jax.process_index()}/{count}: " if count > 1 else ""


def all_agree(flag: bool) -> bool:
    """True on every process as soon as one process says True (a collective: call it at the same
    point on all of them). Used so a SIGTERM to any host stops every host at the same step."""
    if jax.process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).max())


def gather_json(obj) -> list:
    """Every process's ``obj`` (JSON-able), in process order, on every process (a collective)."""
    import json

    if jax.process_count() == 1:
        return [obj]
    import numpy as np
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]
