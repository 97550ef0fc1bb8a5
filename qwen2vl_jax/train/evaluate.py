"""``qwen2vl-jax eval``: loss and exact-match accuracy of generated answers on a dataset.

* loss: next-token cross-entropy on the labelled (assistant) tokens, with the training
  preprocessing and packing, averaged per token;
* exact match: for each record, the conversation up to its last assistant message is the prompt
  (chat template + generation prompt), the answer is generated greedily through the inference
  path (``Qwen2VLForConditionalGeneration.generate``) and compared, stripped, with the record's
  last assistant message.

The model is a run's latest (or chosen) training checkpoint, or an exported / converted model
directory (``--model``). Bad records are skipped and counted, as in training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from qwen2vl_jax.config import RuntimeConfig, canonical_dtype
from qwen2vl_jax.model import abstract_model
from qwen2vl_jax.train.step import make_loss_sum


@dataclasses.dataclass
class EvalResult:
    loss: float
    exact_match: float
    num_examples: int  # answered (generation)
    loss_tokens: int
    skipped: dict[str, int]
    examples: list[dict[str, Any]]  # question, answer, reference, correct, image size

    def summary(self) -> str:
        return (f"eval: loss {self.loss:.4f} over {self.loss_tokens} tokens; exact match "
                f"{100 * self.exact_match:.1f}% of {self.num_examples} examples"
                + (f"; skipped {sum(self.skipped.values())} bad record(s)" if self.skipped else ""))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(item.get("text", "") for item in content if item.get("type") == "text")


def load_trained(run: Any, step: int | None = None) -> tuple[Any, Any, dict]:
    """(processor, model config, params in ``run.runtime.param_dtype``) of a run's checkpoint
    (default: the latest)."""
    from qwen2vl_jax.processing import Qwen2VLProcessor
    from qwen2vl_jax.train.checkpointing import TrainCheckpointer
    from qwen2vl_jax.train.loop import optimizer_config
    from qwen2vl_jax.train.freezing import split_trainable
    from qwen2vl_jax.train.optimizer import make_optimizer
    from qwen2vl_jax.train.setup import build_model_config, processor_dir

    if not (processor_dir(run) / "tokenizer.json").exists():
        raise FileNotFoundError(f"{run.run_dir}: no trained run here (no processor/); train it first "
                                "or pass --model DIR")
    processor = Qwen2VLProcessor.from_pretrained(processor_dir(run))
    cfg = build_model_config(run, processor)
    abstract = nnx.to_pure_dict(nnx.state(abstract_model(cfg, run.runtime), nnx.Param))
    params_like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
    trainable_like = split_trainable(params_like, run.freeze)[0]
    opt_like = jax.eval_shape(make_optimizer(optimizer_config(run), trainable_like).init, trainable_like)
    with TrainCheckpointer(run.checkpoints, async_save=False) as ckpt:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"{run.checkpoints}: no checkpoint to evaluate")
        _, params, _, _, _ = ckpt.restore(params_like, opt_like, step)
    return processor, cfg, params


def evaluate(processor: Any, cfg: Any, params: Any, records: Any, *, num_examples: int, batch_size: int,
             max_new_tokens: int, text_budget: int, patches_per_row: int, show: int = 0) -> EvalResult:
    from collections import Counter

    from data_pipelines.preprocess import RecordPreprocessor, open_image, reason_key
    from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration
    from qwen2vl_jax.layout.packing import first_fit, pack

    n = min(num_examples, len(records))
    patch_budget = batch_size * patches_per_row
    pre = RecordPreprocessor(processor, max_tokens=text_budget, max_patches=patch_budget)
    skipped: Counter[str] = Counter()
    samples, good = [], []
    for i in range(n):
        out = pre(records[i])
        if "error" in out:
            skipped[reason_key(out["error"])] += 1
            continue
        samples.append(out["sample"])
        good.append(i)

    tok = processor.tokenizer
    host = jax.tree.map(np.asarray, params)
    pd = canonical_dtype(jax.tree.leaves(host)[0].dtype)  # evaluate in the weights' own precision
    model = Qwen2VLForConditionalGeneration(cfg, host, runtime=RuntimeConfig(dtype=pd, param_dtype=pd),
                                            generation_config=tok.greedy_generation_config())

    # Loss: pack the samples into fixed-shape batches (one compile), sum over labelled tokens
    # with the training loss itself (chunked: no full logits).
    loss_sum = make_loss_sum(model.graphdef)
    loss_of = model.cached_jit("eval_loss", lambda: jax.jit(lambda params, batch: loss_sum(params, batch)))

    total, tokens, pending = 0.0, 0, list(range(len(samples)))
    while pending:
        group = [samples[k] for k in pending]
        plan = first_fit(group, batch_size, text_budget, patch_budget)
        batch = pack(cfg, group, plan, text_budget, patch_budget)
        for key in ("text_padding_fraction", "patch_padding_fraction"):
            batch.pop(key)
        t, aux = loss_of(model.params, batch)
        c = aux["tokens"]
        total, tokens = total + float(t), tokens + int(c)
        pending = [pending[k] for k in plan.deferred]

    # Exact match: generate each answer through the inference path, batch by batch.
    examples, correct = [], 0
    for start in range(0, len(good), batch_size):
        chunk = [records[i] for i in good[start:start + batch_size]]
        prompts, images, refs = [], [], []
        for r in chunk:
            last = max(k for k, m in enumerate(r["messages"]) if m["role"] == "assistant")
            prompts.append(processor.apply_chat_template(r["messages"][:last], add_generation_prompt=True))
            images.extend(open_image(x, None) for x in r.get("images") or [])
            refs.append(_text_of(r["messages"][last]["content"]).strip())
        inputs = processor(text=prompts, images=images or None, padding=True)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens)
        new = out[:, inputs["input_ids"].shape[1]:]
        for r, ref, ids in zip(chunk, refs, new):
            answer = tok.decode([int(t) for t in ids], skip_special_tokens=True).strip()
            ok = answer == ref
            correct += ok
            if len(examples) < show:
                img = open_image(r["images"][0], None) if r.get("images") else None
                last_user = [m for m in r["messages"] if m["role"] == "user"][-1]
                examples.append({"question": _text_of(last_user["content"]), "answer": answer,
                                 "reference": ref, "correct": ok,
                                 "image_size": None if img is None else img.size, "image": img})
    return EvalResult(loss=total / max(tokens, 1), exact_match=correct / max(len(good), 1),
                      num_examples=len(good), loss_tokens=tokens, skipped=dict(skipped), examples=examples)


def evaluate_run(run: Any, *, model_dir: str | None = None, step: int | None = None, show: int = 0,
                 num_examples: int | None = None) -> EvalResult:
    """Evaluate a run's checkpoint (or ``model_dir``) on the recipe's ``eval.source``."""
    from data_pipelines.sources import open_source

    if run.eval.source is None:
        raise ValueError("no evaluation data: set eval.source in the recipe (or eval.source=... on the command line)")
    if model_dir is not None:
        from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration
        from qwen2vl_jax.processing import Qwen2VLProcessor

        loaded = Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
        processor, cfg, params = Qwen2VLProcessor.from_pretrained(model_dir), loaded.config, loaded.pure_params()
        if not Path(model_dir, "tokenizer.json").exists():
            raise FileNotFoundError(f"{model_dir}: no tokenizer.json")
    else:
        processor, cfg, params = load_trained(run, step)
    records = open_source(dict(run.eval.source))
    return evaluate(processor, cfg, params, records, num_examples=num_examples or run.eval.num_examples,
                    batch_size=run.eval.batch_size, max_new_tokens=run.eval.max_new_tokens,
                    text_budget=run.data.text_budget, patches_per_row=run.data.patches_per_row, show=show)
