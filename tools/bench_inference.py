"""Inference benchmark (issue 4 item 4): see qwen2vl_jax/bench.py or run with --help."""
import sys

from qwen2vl_jax.bench import main

sys.exit(main())
