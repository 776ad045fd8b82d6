"""Training: the loss goes down, the aux-loss-free router bias update, Orbax state, and the
export -> convert -> load round trip of a trained model, which the PyTorch reference
loads and agrees with."""

import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from safetensors.torch import load_file

from onerec_jax.lab import data, train
from onerec_jax.checkpoint import convert, export, load
from onerec_jax.config import preset
from onerec_jax.model import OneRecV2, init_params
from torch_reference import OneRecV2Torch

CONFIG = preset("tiny-moe")  # 2 dense + 2 MoE layers, FP16 params, FP32 compute
OPTIONS = data.DataConfig(n_items=256, n_users=300, n_topics=4, subtopics_per_topic=4)
TC = train.TrainConfig(steps=40, batch_size=32, learning_rate=3e-3, warmup_steps=5,
                       checkpoint_every=20, bias_update_rate=1e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  dataset = data.make_dataset(OPTIONS, CONFIG)
  workdir = tmp_path_factory.mktemp("train")
  params, log = train.train(dataset, TC, workdir=workdir, progress=False)
  return dataset, params, log, workdir


def test_short_training_reduces_the_loss(trained):
  dataset, params, log, _ = trained
  assert [l["step"] for l in log] == list(range(1, TC.steps + 1))
  config = train.training_config(CONFIG)
  start = jax.jit(init_params, static_argnums=0)(config, jax.random.key(TC.seed))
  before = train.evaluate_loss(start, config, dataset, "val", batch_size=15)
  after = train.evaluate_loss(params, config, dataset, "val", batch_size=15)
  assert after.mean() < before.mean() - 0.5, (before, after)
  assert np.mean([l["loss"] for l in log[-5:]]) < np.mean([l["loss"] for l in log[:5]])
  assert all(np.isfinite(l["loss"]) and l["max_load_ratio"] >= 1 for l in log)


def test_router_bias_update_moves_toward_balance():
  bias = jnp.zeros(4)
  params = {"layer_2": {"mlp": {"router": {"score_bias": bias, "weight": jnp.ones((4, 2))},
                                "other": 1}}, "layer_0": {"x": 2}}
  out = train.update_router_bias(params, {2: jnp.array([10.0, 2.0, 4.0, 0.0])}, 0.5)
  # mean load 4: overloaded experts lose bias, underloaded gain, balanced stay.
  np.testing.assert_array_equal(out["layer_2"]["mlp"]["router"]["score_bias"],
                                [-0.5, 0.5, 0.0, 0.5])
  assert out["layer_0"] == {"x": 2} and out["layer_2"]["mlp"]["other"] == 1
  np.testing.assert_array_equal(params["layer_2"]["mlp"]["router"]["score_bias"], bias)


def test_router_bias_changes_only_by_the_update(trained):
  """Each step moves a bias by -gamma, 0 or +gamma: AdamW and weight decay never touch it."""
  _, params, _, _ = trained
  for layer in CONFIG.moe_layers:
    steps = np.asarray(params[f"layer_{layer}"]["mlp"]["router"]["score_bias"]) / 1e-3
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-2)
    assert np.abs(steps).max() > 0


def test_orbax_state_is_saved_and_resumed(trained, tmp_path):
  dataset, _, _, workdir = trained
  assert ocp.CheckpointManager(workdir).all_steps() == [20, 40]
  shutil.copytree(workdir, tmp_path / "w")
  shutil.rmtree(tmp_path / "w" / "40")  # as if the run had stopped after step 20
  _, log = train.train(dataset, TC, workdir=tmp_path / "w", progress=False)
  assert [l["step"] for l in log] == list(range(21, TC.steps + 1))


def test_export_convert_load_round_trip_and_torch_reference_agrees(trained, tmp_path):
  dataset, params, _, _ = trained
  fp16 = train.to_fp16(params)
  export(fp16, CONFIG, tmp_path / "src")
  convert(tmp_path / "src", tmp_path / "jax", progress=False)
  config, loaded, *_ = load(tmp_path / "jax")
  assert config == CONFIG
  chex.assert_trees_all_equal(loaded, fp16)  # bit-exact

  users, cuts = dataset.examples("test")
  features = dataset.features(users[:8], cuts[:8])
  ids = dataset.semantic_ids[dataset.targets(users[:8], cuts[:8])]
  out = jax.jit(OneRecV2(config).apply)({"params": loaded}, features, jnp.asarray(ids))
  model = OneRecV2Torch(CONFIG).to(torch.float16).eval()
  model.load_state_dict(load_file(str(tmp_path / "src" / "model.safetensors")))
  with torch.no_grad():
    ref = model({k: torch.from_numpy(v) for k, v in features.items()},
                torch.from_numpy(ids).long())
  for o, r in zip(out, ref):
    chex.assert_trees_all_close(o, r.numpy(), rtol=1e-5, atol=1e-5)
