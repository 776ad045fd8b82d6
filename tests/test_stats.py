"""`onerec-jax stats`: the report's statistics against numpy, the per-module FP8 errors,
and the JSON, PNG and table it writes for the shipped demo checkpoint (same structure as
tiny-moe: 4 layers, 2 of them MoE with a shared expert); its statistics against an
independent computation (the PyTorch reference's weights and the inputs its projections
see, in numpy)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from onerec_jax import checkpoint
from onerec_jax.lab import analysis
from onerec_jax.cli import main
from test_mapping import _expected_tree
from torch_reference import MoE, OneRecV2Torch


def _numpy_stats(x: np.ndarray) -> dict[str, float]:
  a = np.abs(x.astype(np.float64))
  return {"variance": float(np.var(x.astype(np.float64))), "absmax": float(a.max()),
          "absp99": float(np.percentile(a, 99))}


def _reference_stats(batch: int, seed: int):
  """({weight path: stats}, {quantized module path: stats of its input}) of the demo in
  the PyTorch reference, on analysis.sample_batch(batch, seed): inputs recorded by
  forward pre-hooks on the projections each module stands for (q_proj for qkv_proj,
  gate_proj for gate_up_proj; every routed expert's rows together)."""
  cfg = checkpoint.read_config(checkpoint.DEMO_SOURCE)
  model = OneRecV2Torch(cfg).half()
  model.load_state_dict(load_file(checkpoint.DEMO_SOURCE / "model.safetensors"))
  weights = {path[:-len("/weight")]: _numpy_stats(v) for path, v in
             _expected_tree(model, cfg).items() if path.endswith("/weight") and v.ndim >= 2}
  seen: dict[str, list[np.ndarray]] = {}

  def record(path, module):
    module.register_forward_pre_hook(lambda _, args: seen.setdefault(path, []).append(
        args[0].detach().double().reshape(-1, args[0].shape[-1]).numpy()))

  for i, layer in enumerate(model.layers):
    at, mlp = f"layer_{i}/", layer.mlp
    for name in ("self_attn", "cross_attn"):
      attn = getattr(layer, name)
      record(at + name + ("/qkv_proj" if name == "self_attn" else "/q_proj"), attn.q_proj)
      record(at + name + "/o_proj", attn.o_proj)
    ffns = {"mlp/experts": mlp.experts, "mlp/shared_experts": [mlp.shared_experts]} if (
        isinstance(mlp, MoE)) else {"mlp": [mlp]}
    for path, modules in ffns.items():
      for m in modules:
        record(f"{at}{path}/gate_up_proj", m.gate_proj)
        record(f"{at}{path}/down_proj", m.down_proj)
  features, ids = analysis.sample_batch(cfg, batch, seed)
  with torch.no_grad():  # FP16 parameters, FP32 compute: the demo's dtypes
    model({k: torch.from_numpy(np.array(v)) for k, v in features.items()},
          torch.from_numpy(np.array(ids)).long())
  return weights, {p: _numpy_stats(np.concatenate(xs)) for p, xs in seen.items()}


def test_tensor_stats_and_metrics():
  x = np.arange(-100, 101, dtype=np.float32)  # 201 values
  s = analysis.tensor_stats(x)
  assert s["variance"] == pytest.approx(np.var(x.astype(np.float64)))
  assert s["absmax"] == 100 and s["absp99"] == 99
  assert analysis.sqnr_db(x, x) == float("inf")
  assert analysis.sqnr_db(x, 1.1 * x) == pytest.approx(20.0)
  assert analysis.cosine(x, -2 * x) == pytest.approx(-1.0)


def test_stats_command_on_the_shipped_demo(tmp_path, capsys):
  assert main(["stats", "--batch", "8", "--out", str(tmp_path)]) == 0
  text = capsys.readouterr().out
  data = json.loads((tmp_path / "stats.json").read_text())
  assert data["source"] == f"the shipped demo ({checkpoint.DEMO_SOURCE})"
  png = (tmp_path / "stats.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000
  # Every weight matrix (router included, norm gains excluded); activations of exactly the
  # quantized modules, whose routed experts see batch * levels * top_k rows.
  weights = {w["path"]: w for w in data["weights"]}
  assert len(weights) == 3 + 3 + 4 * 4 + 2 * 2 + 2 * 5  # pathways, heads, attn, dense, moe
  assert weights["layer_2/mlp/router"]["scheme"] == "none"
  acts = {a["path"]: a for a in data["activations"]}
  assert set(acts) == {p for p, w in weights.items() if w["scheme"] != "none"}
  assert acts["layer_2/mlp/experts/gate_up_proj"]["shape"] == [8 * 3 * 2, 128]
  assert acts["layer_0/self_attn/qkv_proj"]["shape"] == [8, 1, 3, 128]
  ref_weights, ref_acts = _reference_stats(batch=8, seed=0)
  assert set(ref_weights) == set(weights) and set(ref_acts) == set(acts)
  for stat in analysis.STATS:
    for rows, ref, rtol in ((weights, ref_weights, 1e-6), (acts, ref_acts, 1e-4)):
      for path, row in rows.items():
        assert row[stat] == pytest.approx(ref[path][stat], rel=rtol), (path, stat)
    assert data["means"]["weights"][stat] == pytest.approx(
        np.mean([w[stat] for w in ref_weights.values()]), rel=1e-6)
    assert data["means"]["activations"][stat] == pytest.approx(
        np.mean([a[stat] for a in ref_acts.values()]), rel=1e-4)
  for a in data["activations"]:
    assert 0 < a["absp99"] <= a["absmax"] and a["variance"] > 0
    assert a["sqnr_db"] > 25, a  # docs/fp8.md: about 28-29 dB per module
  assert len(data["logits"]) == 3
  for a in data["activations"]:  # the table: one row per quantized module, then means
    assert f"{a['path']:<40} {a['scheme']:<11}" in text
  assert "mean, quantized modules" in text and "logits level 2: SQNR" in text


def test_stats_refuses_fp8_checkpoints_and_unknown_presets(tmp_path, capsys):
  dest = checkpoint.convert(checkpoint.DEMO_SOURCE, tmp_path / "fp8", precision="fp8",
                            progress=False)
  assert main(["stats", str(dest), "--out", str(tmp_path)]) == 2
  assert "is an FP8 checkpoint" in capsys.readouterr().err
  assert main(["stats", "--preset", "nope", "--out", str(tmp_path)]) == 2
  assert "unknown preset 'nope'" in capsys.readouterr().err


def test_stats_on_test_requests_under_a_recipe(tmp_path, capsys):
  """--test-requests samples the demo's own test requests (rebuilt from its data.json);
  --recipe measures every module's error under that recipe (4-bit weights: about 20 dB,
  far below FP8's 29)."""
  assert main(["stats", "--batch", "8", "--test-requests", "--recipe", "int4_w4a8",
               "--out", str(tmp_path)]) == 0
  assert "batch 8 (test requests)" in capsys.readouterr().out
  data = json.loads((tmp_path / "stats.json").read_text())
  assert data["sample"] == "test requests" and data["batch"] == 8
  assert {s for _, s in data["rules"]} == {"int4_w4a8"}
  assert all(12 < a["sqnr_db"] < 26 for a in data["activations"]), data["activations"]
  assert main(["stats", "--preset", "tiny", "--test-requests", "--out", str(tmp_path)]) == 2
  assert "--test-requests needs a trained checkpoint" in capsys.readouterr().err
