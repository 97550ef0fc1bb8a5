"""Counts XLA compilations and the seconds spent tracing, lowering and compiling.

JAX reports every stage of a compilation through ``jax.monitoring`` duration events (the names
are those of ``jax._src.dispatch``: ``JAXPR_TRACE_EVENT``, ``JAXPR_TO_MLIR_MODULE_EVENT``,
``BACKEND_COMPILE_EVENT``). A backend-compile event means XLA built a new executable: a cache
hit (the same shapes again) sends none, which is what benchmarks and bucket tests check.
Listeners are process-wide, so a counter sees compilations of every thread while it is open.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Self

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Context manager: while open, counts backend compilations and sums the trace, lowering and
    backend-compile seconds (``trace_s``, ``lower_s``, ``backend_s``; ``seconds`` is their sum).

    ::

        with CompileCounter() as cc:
            f(x)
            mark = cc.backend_compiles
            f(x)
            assert cc.backend_compiles == mark  # the second call reused the executable
    """

    def __init__(self) -> None:
        self.backend_compiles = 0
        self.trace_s = 0.0
        self.lower_s = 0.0
        self.backend_s = 0.0
        self._open = False

    @property
    def seconds(self) -> float:
        """Trace + lowering + backend-compile seconds seen so far."""
        return self.trace_s + self.lower_s + self.backend_s

    def _listen(self, event: str, secs: float, **_: Any) -> None:
        if event == TRACE_EVENT:
            self.trace_s += secs
        elif event == LOWER_EVENT:
            self.lower_s += secs
        elif event == BACKEND_COMPILE_EVENT:
            self.backend_s += secs
            self.backend_compiles += 1

    def __enter__(self) -> Self:
        if self._open:
            raise RuntimeError("this CompileCounter is already open")
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        self._open = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._open:
            import jax

            jax.monitoring.unregister_event_duration_listener(self._listen)
            self._open = False

    def measure(self, fn: Callable[[], Any]) -> tuple[float, float, Any]:
        """Run ``fn`` once: (wall seconds, compile seconds inside it, its result)."""
        if not self._open:
            raise RuntimeError("measure() needs an open CompileCounter (use it in a with block)")
        before = self.seconds
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, self.seconds - before, out
