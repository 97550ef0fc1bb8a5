"""Model config of a scratch run: token ids from the tokenizer, a vocabulary that covers it."""

import dataclasses

from qwen2vl_jax.config import get_preset
from qwen2vl_jax.train.setup import build_model_config


def test_vocab_grows_to_the_tokenizer_but_a_padded_preset_table_is_kept(demo_setup):
    run, processor, cfg = demo_setup
    tok = processor.tokenizer
    size = tok.backend.get_vocab_size(with_added_tokens=True)
    assert cfg.text.vocab_size == size > get_preset("tiny").text.vocab_size  # tiny grows to cover it
    assert cfg.image_token_id == tok.image_token_id and cfg.eos_token_id == tok.token_to_id("<|im_end|>")
    big = dataclasses.replace(run, model=dataclasses.replace(run.model, preset="2b", overrides={}))
    assert build_model_config(big, processor).text.vocab_size == get_preset("2b").text.vocab_size == 151936
