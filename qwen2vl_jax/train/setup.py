"""Build what a run needs from its recipe: the processor, the model config and the first params.

A run either fine-tunes a checkpoint (``model.checkpoint``: HF or Orbax directory; its config,
tokenizer and preprocessor come with it) or trains a preset from scratch (``model.preset``), in
which case the special-token ids follow the tokenizer and the vocabulary grows to cover it when
the preset's is smaller (the demo's tiny preset); a preset's larger, padded table (the released
sizes) is kept.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from qwen2vl_jax.config import ModelConfig, get_preset
from qwen2vl_jax.config.overrides import apply_overrides as replace_nested

BUILTIN_TOKENIZER = "builtin:synthetic_visual_qa"
__all__ = ["build_model_config", "build_processor", "processor_dir", "replace_nested"]


def processor_dir(run: Any) -> Path:
    """Where the run keeps its tokenizer + processor configs (exported with the model)."""
    return run.run_dir / "processor"


def build_processor(run: Any) -> Any:
    """The run's ``Qwen2VLProcessor``, also written to ``run_dir/processor`` (by process 0; the
    others of a multi-process run wait for it and read it, so no two write the same files)."""
    import jax

    from qwen2vl_jax.processing import Qwen2VLProcessor

    out = processor_dir(run)
    if jax.process_index() != 0:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("qwen2vl_processor_written")
        return Qwen2VLProcessor.from_pretrained(out)
    source = run.tokenizer or run.model.checkpoint
    if source == BUILTIN_TOKENIZER:
        from data_pipelines.synthetic import QUESTIONS, answer_vocabulary
        from qwen2vl_jax.testing.tiny_checkpoint import HUB_PREPROCESSOR_CONFIG, build_tiny_tokenizer

        if not (out / "tokenizer.json").exists():
            # Repeating the answers makes each one token, so one prediction carries the answer.
            build_tiny_tokenizer(out, corpus=answer_vocabulary() * 10 + list(QUESTIONS.values()))
            (out / "preprocessor_config.json").write_text(json.dumps(HUB_PREPROCESSOR_CONFIG, indent=2))
        source = out
    if source is None:
        raise ValueError("no tokenizer: set `tokenizer` (a directory with tokenizer.json) or model.checkpoint")
    overrides = {k: v for k, v in (("min_pixels", run.data.min_pixels), ("max_pixels", run.data.max_pixels))
                 if v is not None}
    processor = Qwen2VLProcessor.from_pretrained(source, **overrides)
    processor.save_pretrained(out)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("qwen2vl_processor_written")
    return processor


def build_model_config(run: Any, processor: Any) -> ModelConfig:
    """The architecture a run trains: the checkpoint's (checked against ``model.preset`` if both
    are set) or the preset's with the tokenizer's special-token ids, then ``model.overrides``."""
    m = run.model
    if m.checkpoint is not None:
        path = Path(m.checkpoint) / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"model.checkpoint: {path} not found (convert or export a checkpoint "
                                    "there, or set model.checkpoint=null to train model.preset from scratch)")
        cfg = ModelConfig.from_json_file(path)
        if m.preset is not None:
            want = get_preset(m.preset)
            diff = [f"{part}.{f.name}: {getattr(getattr(cfg, part), f.name)} != {getattr(getattr(want, part), f.name)}"
                    for part in ("vision", "text") for f in dataclasses.fields(getattr(cfg, part))
                    if getattr(getattr(cfg, part), f.name) != getattr(getattr(want, part), f.name)]
            if diff:
                raise ValueError(f"model.checkpoint {m.checkpoint} is not the {m.preset} architecture: {diff}")
        return replace_nested(cfg, m.overrides) if m.overrides else cfg
    cfg = replace_nested(get_preset(m.preset), m.overrides) if m.overrides else get_preset(m.preset)
    tok = processor.tokenizer
    try:
        ids = tok.model_token_ids()
    except ValueError as e:
        raise ValueError(f"tokenizer {run.tokenizer or m.checkpoint}: {e}") from None
    # The embedding must cover the tokenizer; a preset's larger (padded) table is kept as it is.
    vocab = max(cfg.text.vocab_size, tok.backend.get_vocab_size(with_added_tokens=True), max(ids.values()) + 1)
    text = dataclasses.replace(cfg.text, vocab_size=vocab)
    return cfg.replace(text=text, **ids)
