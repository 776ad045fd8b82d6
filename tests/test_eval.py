"""Evaluation: metrics against hand-computed cases, the per-tensor scheme, and one small
end-to-end run of the FP16 vs FP8 report through `onerec-jax eval`."""

import json
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from onerec_jax import checkpoint
from onerec_jax.cli import eval as cli_eval
from onerec_jax.cli import main
from onerec_jax.lab import data, evaluate
from onerec_jax.config import preset
from onerec_jax.model import default_rules, init_params

# Two users, lists of 4 items; user 0's target is ranked 2nd, user 1's is absent.
RANKED = np.array([[7, 3, 9, 1], [4, 5, 6, 8]])
TARGETS = np.array([3, 2])


def test_recall_and_ndcg_by_hand():
  assert evaluate.recall_at(RANKED, TARGETS, 1) == 0.0
  assert evaluate.recall_at(RANKED, TARGETS, 2) == 0.5
  assert evaluate.recall_at(RANKED, TARGETS, 4) == 0.5
  # User 0: hit at rank 2 (index 1) -> 1 / log2(3); user 1: 0.
  assert evaluate.ndcg_at(RANKED, TARGETS, 4) == pytest.approx(0.5 / math.log2(3))
  assert evaluate.ndcg_at(RANKED, TARGETS, 1) == 0.0
  assert evaluate.ndcg_at(np.array([[3, 1]]), np.array([3]), 2) == 1.0
  m = evaluate.ranking_metrics(np.tile(np.arange(60), (2, 1)), np.array([0, 49]))
  assert m == {"recall@1": 0.5, "recall@10": 0.5, "recall@50": 1.0, "ndcg@10": 0.5}


def test_overlap_and_relative_change_by_hand():
  other = np.array([[3, 7, 2, 0], [8, -1, -1, -1]])
  # top-2: user 0 shares {7, 3} (2/2), user 1 shares nothing (0/2).
  assert evaluate.overlap_at(RANKED, other, 2) == 0.5
  # top-4: user 0 shares {7, 3} (2/4), user 1 shares {8} (1/4); empty slots never count.
  assert evaluate.overlap_at(RANKED, other, 4) == pytest.approx(3 / 8)
  assert evaluate.overlap_at(other, other, 4) == pytest.approx((4 + 1) / 8)
  assert evaluate.relative_change(0.5, 0.49) == pytest.approx(-0.02)
  assert evaluate.relative_change(0.0, 0.0) == 0.0


def test_per_tensor_scheme_uses_one_scale():
  x = jnp.array([[1000.0, 1.0], [0.001, -2.0]])
  scale = 1000.0 / 448.0
  want = (np.asarray(x) / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale
  np.testing.assert_allclose(evaluate._per_tensor(x), want, rtol=1e-6)
  # 0.001 underflows under the tensor-wide scale (a per-row one would keep it).
  assert evaluate._per_tensor(x)[1, 0] == 0.0


def test_per_tensor_params_touch_only_the_rules_modules():
  cfg = preset("tiny-moe")
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  rules = default_rules(cfg)
  out = evaluate.per_tensor_params(params, rules)
  assert out["layer_0"]["self_attn"]["qkv_proj"]["weight"].dtype == jnp.float32
  assert out["layer_2"]["mlp"]["experts"]["down_proj"]["weight"].dtype == jnp.float32
  assert out["head_0_proj"]["weight"] is params["head_0_proj"]["weight"]
  assert out["context"]["pathway_static"]["weight"] is params["context"]["pathway_static"][
      "weight"]


def _rows_beyond_e4m3_range(params, cfg):
  """Self-attention q rows times 2^10 and k rows times 2^-10: q . k, so the model, is
  unchanged, but 2^20 now lie between the rows of qkv_proj, beyond e4m3's range (2^-9 to
  448): per-channel weight scales keep k; one scale for the tensor flushes most of it."""
  q, k = cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
  out = jax.tree.map(lambda x: x, params)
  for i in range(cfg.n_layers):
    w = out[f"layer_{i}"]["self_attn"]["qkv_proj"]["weight"]  # [q + 2k, D]: q, k, v
    out[f"layer_{i}"]["self_attn"]["qkv_proj"]["weight"] = (
        w.at[:q].multiply(2.0**10).at[q:q + k].multiply(2.0**-10))
  return out


def test_end_to_end_report(tmp_path, capsys):
  """`onerec-jax eval` on a PyTorch-format source with its data.json: the JSON report and
  the markdown tables."""
  cfg = preset("tiny")  # dense: the smallest model to compile (MoE is covered above)
  options = data.DataConfig(n_items=256, n_users=300, n_topics=4, subtopics_per_topic=4)
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  src = checkpoint.export(_rows_beyond_e4m3_range(params, cfg), cfg, tmp_path / "src")
  (src / cli_eval.DATA_NAME).write_text(json.dumps(options.to_dict()))
  out, md = tmp_path / "report.json", tmp_path / "report.md"
  assert main(["eval", str(src), "--beam-width", "50", "--batch-size", "16",
               "--max-requests", "16", "--output", str(out), "--markdown", str(md)]) == 0
  report = json.loads(out.read_text())
  assert report["checkpoint"] == str(src) and report["data"] == options.to_dict()
  # Every cut point of each test user is a request: 16 requests from 4 users.
  assert report["test_requests"] == 16 and report["test_users"] == 4
  assert report["valid_items"] == 256
  assert set(report["recipes"]) == set(evaluate.RECIPES)
  for s in report["recipes"].values():
    assert 0 < s["overlap@10"] <= 1 and 0 < s["overlap@50"] <= 1
    assert all(10 < x < 60 for x in s["logits_sqnr_db"])  # FP8: finite, far from exact
    assert set(s["relative_change"]) == set(s["relative_change_se"]) == set(report["fp16"])
  # The evaluation tells the worse recipe apart: at levels 1 and 2 (level 0 attends to BOS
  # alone, where q and k do not matter) per_tensor's logits are several dB further from
  # FP16 (measured 8.6 and 6.3 dB) and its top-10 lists overlap FP16's less (0.86, 0.93).
  fp8, per_tensor = report["recipes"]["fp8"], report["recipes"]["per_tensor"]
  for level in (1, 2):
    assert per_tensor["logits_sqnr_db"][level] < fp8["logits_sqnr_db"][level] - 3
  assert per_tensor["overlap@10"] < fp8["overlap@10"]
  assert report["module_errors"]["activations"]
  assert [r["rule"] for r in report["rule_ablation"]] == [
      p for p, _ in default_rules(cfg).rules]
  assert all(x > 10 for r in report["rule_ablation"] for x in r["logits_sqnr_db"])
  text = md.read_text()
  assert text.strip() == evaluate.markdown(report)
  assert capsys.readouterr().out.strip().endswith(text.strip())  # after the progress lines
  assert "| recall@10 |" in text and "FP8 (per_tensor)" in text and "SQNR" in text
  assert "modules in FP8 at a time" in text


def test_paired_standard_error_by_hand():
  a = np.array([1.0, 1.0, 0.0, 0.0])
  b = np.array([1.0, 0.0, 1.0, 0.0])  # differences 0, -1, 1, 0: sd sqrt(2/3), n 4
  assert evaluate.paired_se(a, b) == pytest.approx(math.sqrt(2 / 3) / 2)
  assert evaluate.paired_se(a, a) == 0.0
