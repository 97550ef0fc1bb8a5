"""``python -m qwen2vl_jax.bench``: the inference benchmark (see the package docstring)."""

import sys

from qwen2vl_jax.bench.cli import main

sys.exit(main())
