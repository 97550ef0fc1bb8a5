"""Tokens/s and MFU over a logging window.

MFU = achieved model TFLOP/s per device / the device's dense bf16 peak. The peak comes from
``qwen2vl_jax.perf.devices`` (``detect_peak_tflops``, or the ``peak_tflops`` run setting) and
the model FLOPs from ``qwen2vl_jax.perf.flops``; this module only divides.
"""

from __future__ import annotations

import time


class Throughput:
    """Tokens/s and MFU over a logging window.

    ``Throughput.rates(...)`` is the pure formula; the instance accumulates the steps of a window
    with :meth:`add` and turns them into rates with :meth:`window` (wall time measured from the
    previous window, or given). With JAX's async dispatch, block on the step's outputs (e.g. read
    the loss) before closing a window, or the time is wrong.

    Keys produced: ``tokens_per_s`` (all devices), ``tokens_per_s_per_device``,
    ``patches_per_s`` (when patches were counted), ``tflops_per_device`` (achieved model
    TFLOP/s per device, when FLOPs were given), ``mfu`` (a fraction, when a peak is known).
    """

    def __init__(self, n_devices: int = 1, peak_tflops: float | None = None):
        if n_devices < 1:
            raise ValueError(f"n_devices must be >= 1, got {n_devices}")
        self.n_devices = int(n_devices)
        self.peak_tflops = peak_tflops
        self.reset()

    @staticmethod
    def rates(*, tokens: float, seconds: float, patches: float = 0, flops: float | None = None,
              n_devices: int = 1, peak_tflops: float | None = None) -> dict[str, float]:
        """Rates of ``tokens`` / ``patches`` processed and ``flops`` (model FLOPs, all devices)
        done in ``seconds`` of wall time on ``n_devices`` devices of ``peak_tflops`` each."""
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        out = {"tokens_per_s": tokens / seconds, "tokens_per_s_per_device": tokens / seconds / n_devices}
        if patches:
            out["patches_per_s"] = patches / seconds
        if flops is not None:
            achieved = flops / seconds / n_devices / 1e12
            out["tflops_per_device"] = achieved
            if peak_tflops:
                out["mfu"] = achieved / peak_tflops
        return out

    def reset(self) -> None:
        """Start a new window now."""
        self._t0 = time.perf_counter()
        self._tokens = 0.0
        self._patches = 0.0
        self._flops: float | None = None
        self._steps = 0

    def add(self, tokens: float, patches: float = 0, flops: float | None = None) -> None:
        """Count one step's real tokens, patches and model FLOPs (all devices together)."""
        self._tokens += float(tokens)
        self._patches += float(patches)
        if flops is not None:
            self._flops = (self._flops or 0.0) + float(flops)
        self._steps += 1

    def window(self, seconds: float | None = None) -> dict[str, float]:
        """Rates over the steps added since the last window, then start a new one. Adds
        ``step_time_s`` (seconds per step). Empty when nothing was added."""
        elapsed = time.perf_counter() - self._t0 if seconds is None else float(seconds)
        steps = self._steps
        out = {}
        if steps and elapsed > 0:
            out = self.rates(tokens=self._tokens, seconds=elapsed, patches=self._patches, flops=self._flops,
                             n_devices=self.n_devices, peak_tflops=self.peak_tflops)
            out["step_time_s"] = elapsed / steps
        self.reset()
        return out
