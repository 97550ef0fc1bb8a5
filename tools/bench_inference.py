"""Inference benchmark: see the qwen2vl_jax.bench package docstring, or run with --help."""
import sys

from qwen2vl_jax.bench import main

sys.exit(main())
