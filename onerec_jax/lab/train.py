"""Training of OneRec-V2 on a Dataset: the mean cross-entropy over the semantic-ID levels
(OneRec-V2's objective), AdamW with warm-up and cosine decay, gradient clipping, and the
DeepSeek-V3 auxiliary-loss-free balancing of the MoE routers.

Parameters are trained in FP32 (the model config's param_dtype is replaced); `to_fp16`
gives the FP16 tree that checkpoint.export writes. With a workdir, the training state is
saved there with Orbax every `checkpoint_every` steps and a run resumes from the latest one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from onerec_jax import generate as gen
from onerec_jax.checkpoint import export
from onerec_jax.config import Config
from onerec_jax.lab.data import Dataset, batches
from onerec_jax.model import OneRecV2, init_params

SAMPLE_USERS = 16  # test requests written to contexts.npz beside a trained model


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 600
  batch_size: int = 256
  learning_rate: float = 2e-3
  warmup_steps: int = 50
  weight_decay: float = 0.01  # on matrices only; norms, embeddings and biases are exempt
  clip_norm: float = 1.0
  bias_update_rate: float = 1e-3  # gamma of the aux-loss-free bias update
  seed: int = 0
  checkpoint_every: int = 500

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def training_config(config: Config) -> Config:
  """The model config with FP32 parameters (the master copy that AdamW updates)."""
  return config.replace(param_dtype="float32")


def to_fp16(params: Any) -> Any:
  return jax.tree.map(lambda x: x.astype(jnp.float16), params)


@functools.cache  # one transformation per TrainConfig, so train_step compiles once for it
def optimizer(tc: TrainConfig) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(0.0, tc.learning_rate, tc.warmup_steps,
                                                max(tc.steps, tc.warmup_steps + 1))
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(optax.clip_by_global_norm(tc.clip_norm),
                     optax.adamw(schedule, weight_decay=tc.weight_decay, mask=decay_mask))


def loss_fn(params: Any, config: Config, features: dict[str, jax.Array], ids: jax.Array):
  """Mean over levels of the teacher-forced cross-entropy; returns (loss, (per-level CE
  [levels], routed expert ids per MoE layer))."""
  logits, state = OneRecV2(config).apply({"params": params}, features, ids,
                                         mutable=["intermediates"])
  ce = jnp.stack([optax.softmax_cross_entropy_with_integer_labels(l, ids[:, j]).mean()
                  for j, l in enumerate(logits)])
  routed = {i: state["intermediates"][f"layer_{i}"]["mlp"]["router"]["expert_ids"][0]
            for i in config.moe_layers}
  return ce.mean(), (ce, routed)


def expert_loads(routed: dict[int, jax.Array], num_experts: int) -> dict[int, jax.Array]:
  """Tokens routed to each expert, per MoE layer: {layer: [E] f32}."""
  return {i: jnp.zeros(num_experts).at[ids.ravel()].add(1.0) for i, ids in routed.items()}


def update_router_bias(params: Any, loads: dict[int, jax.Array], gamma: float) -> Any:
  """DeepSeek-V3 aux-loss-free balancing: bias_e += gamma * sign(mean load - load_e) for
  each MoE layer's router (no gradient flows through the bias)."""
  params = dict(params)
  for i, load in loads.items():
    layer = dict(params[f"layer_{i}"])
    mlp = dict(layer["mlp"])
    router = dict(mlp["router"])
    router["score_bias"] = router["score_bias"] + gamma * jnp.sign(load.mean() - load)
    mlp["router"], layer["mlp"], params[f"layer_{i}"] = router, mlp, layer
  return params


@functools.partial(jax.jit, static_argnames=("config", "opt", "gamma"), donate_argnums=(0,))
def train_step(state: dict[str, Any], features, ids, *, config: Config,
               opt: optax.GradientTransformation, gamma: float):
  """One AdamW step and one router-bias update; returns (state, metrics)."""
  (loss, (ce, routed)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"], config, features, ids)
  updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  loads = expert_loads(routed, config.n_routed_experts)
  params = update_router_bias(params, loads, gamma)
  imbalance = jnp.stack([l.max() / l.mean() for l in loads.values()]).max() if loads \
      else jnp.float32(1.0)
  return ({"params": params, "opt_state": opt_state, "step": state["step"] + 1},
          {"loss": loss, "ce": ce, "grad_norm": optax.tree.norm(grads),
           "max_load_ratio": imbalance})


@functools.partial(jax.jit, static_argnames=("config",))
def _eval_loss(params, features, ids, *, config: Config):
  return loss_fn(params, config, features, ids)[1][0]


def evaluate_loss(params: Any, config: Config, dataset: Dataset, split: str,
                  batch_size: int = 512) -> np.ndarray:
  """Per-level cross-entropy [levels] over a split's examples (full batches only)."""
  users, cuts = dataset.examples(split)
  total = []
  for lo in range(0, len(users) - batch_size + 1, batch_size):
    u, c = users[lo:lo + batch_size], cuts[lo:lo + batch_size]
    total.append(_eval_loss(params, dataset.features(u, c),
                            dataset.semantic_ids[dataset.targets(u, c)], config=config))
  return np.mean(np.asarray(total), axis=0)


def train(dataset: Dataset, tc: TrainConfig, *, workdir: str | os.PathLike | None = None,
          progress: bool = True) -> tuple[Any, list[dict[str, float]]]:
  """Trains a model of dataset.model_config's architecture; returns (FP32 params, log:
  one dict per step with loss, per-level CE, gradient norm, router load ratio, seconds)."""
  config = training_config(dataset.model_config)
  opt = optimizer(tc)
  params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(tc.seed))
  # Committed to the device, as Orbax restores it, so a resumed run reuses the compiled step.
  state = jax.device_put({"params": params, "opt_state": opt.init(params),
                          "step": jnp.int32(0)}, jax.devices()[0])
  manager = None
  if workdir is not None:
    manager = ocp.CheckpointManager(os.path.abspath(workdir),
                                    options=ocp.CheckpointManagerOptions(max_to_keep=2))
    if manager.latest_step() is not None:
      state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(state))
  start = int(state["step"])
  rng = np.random.default_rng([tc.seed, start])  # a resumed run continues with fresh batches
  data = batches(dataset, "train", tc.batch_size, rng)
  log = []
  t0 = time.perf_counter()
  bar = tqdm.trange(start, tc.steps, desc="train", disable=not progress)
  for step in bar:
    features, ids = next(data)
    state, metrics = train_step(state, features, jnp.asarray(ids), config=config, opt=opt,
                                gamma=tc.bias_update_rate)
    m = jax.device_get(metrics)
    log.append({"step": step + 1, "loss": float(m["loss"]),
                "ce": [float(c) for c in m["ce"]], "grad_norm": float(m["grad_norm"]),
                "max_load_ratio": float(m["max_load_ratio"]),
                "seconds": time.perf_counter() - t0})
    bar.set_postfix(loss=f"{log[-1]['loss']:.3f}")
    if manager is not None and ((step + 1) % tc.checkpoint_every == 0
                                or step + 1 == tc.steps):
      manager.save(step + 1, args=ocp.args.StandardSave(state))
  if manager is not None:
    manager.wait_until_finished()
  return state["params"], log


def add_arguments(parser, defaults: TrainConfig, workdir: str) -> None:
  """The command-line options of the training scripts."""
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path(workdir),
                      help="Orbax training state (started afresh unless --resume)")
  parser.add_argument("--steps", type=int, default=defaults.steps)
  parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
  parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
  parser.add_argument("--seed", type=int, default=defaults.seed,
                      help="data and initialisation seed")
  parser.add_argument("--resume", action="store_true",
                      help="continue from the latest training state in --workdir")


def config_from_arguments(args, defaults: TrainConfig) -> TrainConfig:
  """The TrainConfig of add_arguments' options; clears the workdir unless --resume."""
  if not args.resume:
    shutil.rmtree(args.workdir, ignore_errors=True)
  return dataclasses.replace(defaults, steps=args.steps, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, seed=args.seed)


def train_and_write(out: pathlib.Path, dataset: Dataset, options: Any, tc: TrainConfig,
                    workdir: pathlib.Path, data_seconds: float) -> None:
  """Trains on dataset (the training state in workdir) and writes the model folder."""
  t0 = time.perf_counter()
  params, log = train(dataset, tc, workdir=workdir)
  seconds = {"data": data_seconds, "train": time.perf_counter() - t0}
  size = write_model_folder(out, params, dataset, options, tc, log, seconds)
  print(f"wrote {out} ({size / 1e6:.1f} MB)")


def write_model_folder(out: pathlib.Path, params: Any, dataset: Dataset, options: Any,
                       tc: TrainConfig, log: list[dict[str, float]],
                       seconds: dict[str, float]) -> int:
  """Exports a trained model and what the demo, generate and eval read beside it; returns
  the folder's size in bytes:
    model.safetensors, config.json   the FP16 model (checkpoints/README.md)
    valid_items.npz                  item_ids [I], semantic_ids [I, levels]
    contexts.npz                     SAMPLE_USERS test requests (generate --contexts;
                                     request_ids are the user ids)
    data.json                        the options that rebuild the dataset (eval)
    train.json                       training options, times, loss curve, validation CE
  """
  config = dataset.model_config
  val_ce = evaluate_loss(params, training_config(config), dataset, "val")
  export(to_fp16(params), config, out)
  np.savez(out / "valid_items.npz", item_ids=dataset.item_ids,
           semantic_ids=dataset.semantic_ids)
  users, cuts = dataset.examples("test", every_cut=False)
  users, cuts = users[:SAMPLE_USERS], cuts[:SAMPLE_USERS]
  gen.save_contexts(out / "contexts.npz", dataset.features(users, cuts), request_ids=users)
  (out / "data.json").write_text(json.dumps(options.to_dict(), indent=2))
  every = max(1, len(log) // 20)
  (out / "train.json").write_text(json.dumps({
      "train": tc.to_dict(), "examples": int(len(dataset.examples("train")[0])),
      **{f"{k}_seconds": v for k, v in seconds.items()},
      "val_ce": [float(c) for c in val_ce],
      "log": [{k: l[k] for k in ("step", "loss", "ce", "max_load_ratio", "seconds")}
              for l in log[::every] + log[-1:]]}, indent=1))
  print(f"trained {len(log)} steps in {seconds['train']:.0f} s; final loss "
        f"{log[-1]['loss']:.3f}, val CE {np.round(val_ce, 3).tolist()}")
  return sum(f.stat().st_size for f in out.iterdir())
