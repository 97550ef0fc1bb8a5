"""Test support. ``hf_oracle`` needs the [parity] extra (torch + transformers); never imported by
the library itself."""
