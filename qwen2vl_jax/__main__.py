import sys

from qwen2vl_jax.cli import main

sys.exit(main())
