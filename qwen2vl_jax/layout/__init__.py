"""Host-side layout, in numpy (no jax): everything that depends on image sizes or text lengths.

The compiled model only ever sees fixed-shape arrays computed here:

  vision.py      per-patch rotary ids, one attention segment per temporal slice, and which merged
                 vision token fills which placeholder slot
  rope_index.py  M-RoPE position ids [3, B, S] and per-row ``rope_deltas`` (docs/mrope.md)
  inputs.py      HF-style inputs -> the model's input dict (``prepare_model_inputs``)
  buckets.py     padding to the configured fixed shapes
  packing.py     first-fit packing of training samples into fixed (rows x text, patch) budgets
"""

from qwen2vl_jax.layout.buckets import bucket_model_inputs, choose_bucket
from qwen2vl_jax.layout.inputs import (
           IGNORE_INDEX,
           MODEL_INPUT_KEYS,
           dummy_bucketed_batch,
           prepare_model_inputs,
)
from qwen2vl_jax.layout.rope_index import get_rope_index
from qwen2vl_jax.layout.vision import (
           check_grid,
           vision_position_ids,
           vision_scatter_index,
           vision_segment_ids,
)

__all__ = ["IGNORE_INDEX", "MODEL_INPUT_KEYS", "bucket_model_inputs", "check_grid", "choose_bucket",
           "dummy_bucketed_batch", "get_rope_index", "prepare_model_inputs", "vision_position_ids",
           "vision_scatter_index", "vision_segment_ids"]
