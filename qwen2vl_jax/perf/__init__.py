"""Performance arithmetic shared by training, the benchmarks and planning tools.

``devices``: the one table of accelerator peaks (dense bf16 TFLOP/s, HBM bandwidth and size).
``flops``: model FLOPs of Qwen2-VL (for MFU). ``compile_count``: counts XLA compilations.
``timing``: wall-clock helpers of the benchmarks. Each module is imported on its own; this
package imports nothing at load time.
"""
