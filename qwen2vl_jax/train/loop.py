"""The training loop: recipe -> run directory with checkpoints, metrics and an exported model.

    run_dir = output_dir/run_name/
        config.yaml        the resolved recipe
        processor/         tokenizer + preprocessor configs
        checkpoints/<step> Orbax: params, optimizer state, step, data-iterator state, config
        metrics.jsonl      one line per log_every steps ({"step", "loss", ...})
        tensorboard/       when tensorboardX is installed (or tensorboard=true)
        model/             the final weights in the HF layout + processor (``generate --model``)

Running the same command again resumes from the latest checkpoint (params, optimizer state and
the exact data stream). SIGTERM (a preemption notice) saves a checkpoint after the current step
and exits cleanly. The step runs on the mesh of ``runtime.mesh`` (recipe key ``mesh:``; default:
every device on ``fsdp``): parameters and optimizer state sharded by the rules table, one packed
group of ``per_device_batch_size`` rows per device whatever the mesh's shape, so changing only
the mesh changes no batch (see data_pipelines/pipeline.py and train/state.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from qwen2vl_jax.perf.devices import detect_peak_tflops
from qwen2vl_jax.perf.flops import train_flops_from_batch
from qwen2vl_jax.sharding.mesh import describe, make_mesh
from qwen2vl_jax.train.checkpointing import PreemptionGuard, TrainCheckpointer
from qwen2vl_jax.train.distributed import all_agree, gather_json
from qwen2vl_jax.train.metrics import MetricsLogger, Throughput
from qwen2vl_jax.train.nonfinite import NonFiniteWatch
from qwen2vl_jax.train.resume_check import check_resume
from qwen2vl_jax.train.run_config import RunConfig, dump_yaml
from qwen2vl_jax.train.run_lock import RunLock
from qwen2vl_jax.train.setup import build_model_config, build_processor
from qwen2vl_jax.train.state import initial_params, make_train_setup

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    run_dir: str
    start_step: int
    last_step: int
    preempted: bool
    metrics: dict[str, float]  # the last logged line
    model_dir: str | None  # the exported model (None unless the run reached its last step)


def optimizer_config(run: RunConfig):
    opt = run.optimizer
    return opt if opt.total_steps > 0 else dataclasses.replace(opt, total_steps=run.steps)


def _batch_crc(batch: dict[str, np.ndarray]) -> int:
    """A fingerprint of a step's data (tests check that a resumed run sees the same batches)."""
    crc = zlib.crc32(np.ascontiguousarray(batch["input_ids"]).tobytes())
    return zlib.crc32(np.ascontiguousarray(batch["labels"]).tobytes(), crc)


def _quiet(_: str) -> None:
    pass


def restore_data_state(data: Any, state: dict, accept_changes: bool, say: Callable[[str], None]) -> None:
    """Continue the checkpoint's exact data stream, or say clearly why it cannot carry over. A
    different number of devices (= packing groups) is a change the user may make (the mesh and
    the process count are free): the stream starts afresh, with a message. Anything else (other
    budgets, an older format) is refused unless the recipe accepts changes."""
    from data_pipelines.pipeline import DeviceCountChanged, StateMismatch

    try:
        data.set_state(state)
    except StateMismatch as e:
        if not accept_changes and not isinstance(e, DeviceCountChanged):
            raise ValueError(f"the data iterator state of the checkpoint cannot carry over: {e} "
                             "(set accept_changed_recipe=true to start the data stream afresh)") from None
        say(f"the data iterator state cannot carry over ({e}): starting the data stream afresh")


def train(run: RunConfig, *, say: Callable[[str], None] = print) -> TrainResult:
    """Train ``run`` (resuming from its latest valid checkpoint); see the module docstring."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() != 0:  # logs, metrics and the progress bar come from process 0 only
        return _train(run, _quiet)
    # Process 0 holds the run directory's lock for the whole run (the others share it).
    with RunLock(run.run_dir, say=say) as lock:
        return _train(run, say, lock)


def _train(run: RunConfig, say: Callable[[str], None], lock: RunLock | None = None) -> TrainResult:
    from data_pipelines.pipeline import PackedBatches, merge_states, process_groups

    run_dir = run.run_dir
    main_process = jax.process_index() == 0
    processor = build_processor(run)
    cfg = build_model_config(run, processor)

    mesh = make_mesh(run.runtime.mesh)
    setup = make_train_setup(run, cfg, mesh)
    data_sharding = setup.batch_sharding()
    params = initial_params(run, setup)
    opt_state = setup.init_opt_state(params)
    step_fn = setup.step_fn

    data = PackedBatches(cfg, run.data, processor, rows=run.per_device_batch_size, grad_accum=run.grad_accum,
                         num_groups=setup.groups,
                         groups=process_groups(setup.groups, jax.process_index(), jax.process_count()),
                         seed=run.seed, pixel_dtype=run.runtime.dtype, base_dir=os.getcwd())
    ckpt = TrainCheckpointer(run.checkpoints, keep_last=run.keep_checkpoints, say=say)
    start = 0
    if ckpt.all_steps():
        start, params, opt_state, data_state, saved = ckpt.restore(params, opt_state)
        check_resume(saved, run.to_dict(), run.accept_changed_recipe, say=say)
        restore_data_state(data, data_state, run.accept_changed_recipe, say)
        say(f"resuming {run_dir} from the checkpoint of step {start}")
    if main_process:
        (run_dir / "config.yaml").write_text(dump_yaml(run))
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))
    say(f"run {run_dir}: {n_params:,} parameters, {jax.device_count()} {jax.devices()[0].platform} device(s) "
        f"on mesh {describe(mesh)}, batch {run.grad_accum} x {setup.groups} x {run.per_device_batch_size} rows x "
        f"{run.data.text_budget} tokens, steps {start} -> {run.steps}")

    _, peak = detect_peak_tflops(run.peak_tflops)
    logger = MetricsLogger(run_dir, tensorboard={"auto": "auto", "true": True, "false": False}[run.tensorboard],
                           wandb=run.wandb, config=run.to_dict(), progress_total_steps=run.steps,
                           resume_step=start, active=main_process)
    meter = Throughput(n_devices=jax.device_count(), peak_tflops=peak)
    window: dict[str, list[float]] = {}
    loss_sum, last = None, {}
    nonfinite = NonFiniteWatch(run.max_nonfinite_steps)
    preempted, step = False, start
    try:
        with PreemptionGuard() as guard:
            while step < run.steps:
                item = next(data)
                host = item["batch"]
                batch = {k: jax.make_array_from_process_local_data(data_sharding, v) for k, v in host.items()}
                with jax.set_mesh(mesh):
                    params, opt_state, m = step_fn(params, opt_state, batch)
                step += 1
                nonfinite.add(step, m["finite"], item.get("record_indices"))
                finite_loss = jax.numpy.where(m["finite"], m["loss"], 0.0)
                loss_sum = finite_loss if loss_sum is None else loss_sum + finite_loss
                stats = item["stats"]
                meter.add(stats["text_tokens"] * jax.process_count(), stats["vision_patches"] * jax.process_count(),
                          train_flops_from_batch(cfg, host, freeze=run.freeze) * jax.process_count())
                for k in ("text_padding_fraction", "patch_padding_fraction"):
                    window.setdefault(k, []).append(stats[k])
                if step % run.log_every == 0 or step == run.steps:
                    fetched = jax.device_get({**m, "loss_sum": loss_sum})
                    n = len(window["text_padding_fraction"])
                    counted = nonfinite.settle()
                    last = {
                        "loss": float(fetched["loss_sum"]) / max(n - counted.in_window, 1),
                        "grad_norm": float(fetched["grad_norm"]),
                        "learning_rate": float(fetched["learning_rate"]),
                        "labelled_tokens": int(fetched["tokens"]),
                        **({"z_loss": float(fetched["z_loss"])} if run.z_loss_weight else {}),
                        **{k: float(np.mean(v)) for k, v in window.items()},
                        "skipped_records": int(stats["skipped_records"]),
                        **({"truncated_records": int(stats["truncated_records"])}
                           if "truncated_records" in stats else {}),
                        "nonfinite_steps": counted.total,
                        **meter.window(),
                        "batch_crc": _batch_crc(host),
                    }
                    logger.log(step, last)
                    loss_sum, window = None, {}
                    if lock is not None:
                        lock.heartbeat()
                if all_agree(guard.requested):  # every host stops at the same step, whichever got the signal
                    logger.write(f"{guard.signal_name or 'preemption on another host'}: saving a checkpoint at "
                                 f"step {step} and exiting")
                    preempted = True
                if step % run.checkpoint_every == 0 or step == run.steps or preempted:
                    nonfinite.settle()
                    # Every process's share of the data state (its groups), merged: restorable on
                    # any process count with the same number of groups.
                    data_state = merge_states(gather_json(data.get_state()))
                    ckpt.save(step, params, opt_state, data_iter_state=data_state, config=run.to_dict(), force=True)
                if preempted:
                    break
        nonfinite.settle()
    finally:
        ckpt.close()
        data.close()
        logger.close()
    skipped = dict(data.skipped)
    if skipped:
        say(f"skipped {sum(skipped.values())} bad record(s): {skipped}")
    model_dir = None
    if step == run.steps:  # every process takes part (one tensor gathered at a time); process 0 writes
        model_dir = str(export_model(run, cfg, params, processor))
        say(f"exported the trained model to {model_dir}")
    return TrainResult(str(run_dir), start, step, preempted, last, model_dir)


def export_model(run: RunConfig, cfg: Any, params: Any, processor: Any):
    """Save ``params`` in the HF layout with the processor, for ``generate`` / ``eval --model``,
    tensor by tensor from their shards (the model is never gathered on one host)."""
    from qwen2vl_jax.hf import save_hf_checkpoint

    writer = jax.process_index() == 0
    out = save_hf_checkpoint(run.run_dir / "model", cfg, params, run.runtime.param_dtype,
                             processor.tokenizer.greedy_generation_config(), write=writer)
    if writer:
        processor.save_pretrained(out)
    return out


__all__ = ["TrainResult", "export_model", "optimizer_config", "train"]
