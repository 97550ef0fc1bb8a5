"""Run in a subprocess with 8 fake CPU devices (tests/sharding/test_meshes.py): the tiny model's
forward logits, loss, gradients, 3 training steps and greedy generation on each mesh, saved as
OUT_DIR/<mesh>.npz. Usage: python mesh_worker.py OUT_DIR MESH [MESH ...]   ("single" = 1 device)."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from qwen2vl_jax import Qwen2VLForConditionalGeneration, RuntimeConfig, get_preset  # noqa: E402
from qwen2vl_jax.layout import prepare_model_inputs  # noqa: E402
from qwen2vl_jax.layout.packing import Sample, first_fit, pack  # noqa: E402
from qwen2vl_jax.sharding.mesh import make_mesh  # noqa: E402
from qwen2vl_jax.train.freezing import FreezeConfig, split_trainable  # noqa: E402
from qwen2vl_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer  # noqa: E402
from qwen2vl_jax.train.step import make_loss_sum, make_train_step  # noqa: E402

CFG = get_preset("tiny")


def prompt_batch(rng):
    """Two left-padded rows: an image in row 0, a video in row 1."""
    c = CFG
    row0 = [5, 6, c.vision_start_token_id] + [c.image_token_id] * 6 + [c.vision_end_token_id, 7, 8, 9]
    row1 = [10, c.vision_start_token_id] + [c.video_token_id] * 6 + [c.vision_end_token_id, 11]
    s = max(len(row0), len(row1))
    ids = np.zeros((2, s), np.int64)
    mask = np.zeros((2, s), np.int64)
    for i, r in enumerate((row0, row1)):
        ids[i, s - len(r):], mask[i, s - len(r):] = r, 1
    pix = rng.standard_normal((24, 1176)).astype(np.float32)
    vpix = rng.standard_normal((24, 1176)).astype(np.float32)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pix, image_grid_thw=np.array([[1, 4, 6]]),
                pixel_values_videos=vpix, video_grid_thw=np.array([[3, 2, 4]]))


def train_batch(rng, groups=8):
    """[A=1, G, rows=1, ...]: one packed row (two samples) per group, each with an image."""
    c = CFG
    parts = []
    for _ in range(groups):
        samples = []
        for _ in range(2):
            text = rng.integers(5, 100, size=5).tolist()
            ids = np.array(text[:2] + [c.vision_start_token_id] + [c.image_token_id] * 6
                           + [c.vision_end_token_id] + text[2:])
            labels = np.where(np.arange(len(ids)) > 9, ids, -100)
            samples.append(Sample(ids, labels, rng.standard_normal((24, 1176)).astype(np.float32),
                                  np.array([[1, 4, 6]])))
        b = pack(c, samples, first_fit(samples, 1, 32, 64), 32, 64)
        parts.append({k: v for k, v in b.items() if not k.endswith("fraction")})
    return {k: np.stack([p[k] for p in parts])[None] for k in parts[0]}


def main(mesh_spec: str, out: str) -> None:
    devices = jax.devices()[:1] if mesh_spec == "single" else None
    mesh = make_mesh(None if mesh_spec == "single" else mesh_spec, devices)
    rng = np.random.default_rng(0)
    model = Qwen2VLForConditionalGeneration(CFG, runtime=RuntimeConfig(), mesh=mesh, seed=0)
    inputs = prompt_batch(rng)
    results = {"logits": model(**inputs).logits}
    results["tokens"] = model.generate(**inputs, max_new_tokens=6, do_sample=False, repetition_penalty=1.0)

    batch = train_batch(rng)
    params = model.pure_params()
    freeze = FreezeConfig()
    with jax.set_mesh(mesh):
        loss_sum = make_loss_sum(model.graphdef)
        sharded = {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())) for k, v in
                   jax.tree.map(lambda x: x[0], batch).items()}
        (total, aux), grads = jax.jit(jax.value_and_grad(loss_sum, has_aux=True))(params, sharded)
        results["loss_sum"] = np.asarray(total)
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
            results["grad/" + "/".join(str(k.key) for k in path)] = np.asarray(g)
        opt = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, total_steps=10)
        trainable, _ = split_trainable(params, freeze)
        tx = make_optimizer(opt, trainable)
        step = make_train_step(model.graphdef, tx, freeze, schedule=learning_rate_schedule(opt))
        opt_state = jax.jit(tx.init)(trainable)
        losses = []
        for _ in range(3):
            params, opt_state, m = step(params, opt_state, batch)
            losses.append(float(m["loss"]))
        results["train_losses"] = np.asarray(losses)
        # Adam's moments are sharded exactly like the parameters they belong to.
        mu = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")][0].mu
        same = jax.tree.map(lambda m, p: m.sharding.is_equivalent_to(p.sharding, m.ndim), mu, trainable)
        results["moments_sharded_like_params"] = np.asarray(all(jax.tree.leaves(same)))
        from qwen2vl_jax.generation.cache import KVCache

        cache = jax.jit(lambda: KVCache.create(CFG.text, 8, 128, np.float32))()
        results["cache_spec"] = np.asarray(str(cache.keys.sharding.spec))
        results["cache_kv_heads"] = np.asarray(cache.keys.shape[3])
        results["param_shard_bytes"] = np.asarray(max(
            sum(s.data.nbytes for leaf in jax.tree.leaves(params) for s in leaf.addressable_shards
                if s.device == d) for d in mesh.devices.flat))
    np.savez(out, **results)
    print("ok", mesh_spec, losses)


if __name__ == "__main__":
    for spec in sys.argv[2:]:
        main(spec, os.path.join(sys.argv[1], f"{spec}.npz"))
