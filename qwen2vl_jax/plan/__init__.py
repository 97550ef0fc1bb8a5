"""Pod planning without a pod: ``qwen2vl-jax plan`` compiles the real train step of a recipe, or
generation's prefill / decode step, ahead of time for a TPU slice with libtpu on any machine,
and reports the memory per chip against the chip's HBM and the FLOPs per step.

``topology``: slice names -> libtpu topologies (host layout included); ``train_plan`` /
``serve_plan``: the programs; ``report``: memory, FLOPs and the printed table; ``command``: the
CLI. Submodules are imported where used; this package imports nothing at load time.
"""
