"""Checkpoints: the HF <-> ours name table, safetensors I/O, our Orbax format, conversion.

  hf_names.py        the one table mapping HF tensor names to our parameter paths (docs/checkpoint_names.md)
  safetensors_io.py  streaming safetensors reader / writer (numpy, no torch)
  native.py          our Orbax checkpoint (params + config.json + a marker file)
  convert.py         HF safetensors <-> our Orbax format, one tensor at a time
"""
