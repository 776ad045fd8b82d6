"""The JAX model against the PyTorch reference, incremental decoding, and MoE routing."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from helpers import random_features, random_ids, state_dict_numpy, torch_model
from onerec_jax.checkpoint import open_source, torch_to_jax
from onerec_jax.checkpoint.source import StateDictSource
from onerec_jax.config import preset
from onerec_jax.model import OneRecV2, extend, init_params
from onerec_jax.model.layers import valid_first

CONFIGS = {
    # dense, G_kv < heads, S_kv 1, L_kv 1
    "dense": preset("tiny"),
    # 2 dense + 2 MoE layers, S_kv 2, L_kv 2, sigmoid router with bias, shared expert
    "moe": preset("tiny-moe"),
    # L_kv > 1 with S_kv 1 (V = K), softmax router without normalisation, scaled gates
    "moe_softmax": preset("tiny-moe").replace(kv_split=1, kv_sets=3, router_score="softmax",
                                              norm_topk_prob=False,
                                              routed_scaling_factor=2.5,
                                              n_shared_experts=0),
}


def _both(cfg, batch=3, seed=0, mask=None):
  """(JAX logits, torch logits, torch model, JAX params) on the same converted weights."""
  model = torch_model(cfg, seed)
  params = torch_to_jax(StateDictSource(state_dict_numpy(model)), cfg)
  feats, ids = random_features(cfg, batch, seed + 1), random_ids(cfg, batch, seed + 2)
  jmask = None if mask is None else {k: jnp.asarray(v) for k, v in mask.items()}
  out = OneRecV2(cfg).apply({"params": params}, feats, jnp.asarray(ids), jmask)
  tmask = None if mask is None else torch.from_numpy(
      np.concatenate([mask[p.name] for p in cfg.pathways], 1))
  with torch.no_grad():
    ref = model({k: torch.from_numpy(v) for k, v in feats.items()},
                torch.from_numpy(ids).long(), tmask)
  return out, [r.numpy() for r in ref], model, params


def _jit_decode(model):
  """model.apply(..., method="decode"), jitted (a Past is a pytree)."""
  return jax.jit(functools.partial(model.apply, method="decode"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float32_parity_with_torch(name):
  cfg = CONFIGS[name]
  out, ref, _, _ = _both(cfg)
  for j, (o, r) in enumerate(zip(out, ref)):
    chex.assert_shape(o, (3, cfg.codebook_sizes[j]))
    chex.assert_tree_all_finite(o)
    chex.assert_trees_all_close(o, r, rtol=1e-5, atol=1e-5)


def test_float32_parity_with_context_mask():
  cfg = CONFIGS["moe"]
  rng = np.random.default_rng(5)
  mask = {p.name: rng.random((3, p.max_len)) < 0.7 for p in cfg.pathways}
  for m in mask.values():
    m[:, 0] = True  # at least one valid token per pathway and request
  out, ref, _, _ = _both(cfg, mask=mask)
  chex.assert_trees_all_close(tuple(out), tuple(ref), rtol=1e-5, atol=1e-5)


def test_valid_first():
  """The gather order puts each row's valid positions first, in their order, then the
  rest in theirs; lengths count them (an empty row: 0)."""
  mask = jnp.array([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
  order, lengths = valid_first(mask)
  np.testing.assert_array_equal(order, [[1, 3, 4, 0, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])
  np.testing.assert_array_equal(lengths, [3, 0, 5])
  assert lengths.dtype == jnp.int32


def test_context_puts_each_requests_valid_tokens_first():
  """With a mask, the context's K/V rows are each request's valid tokens in their order,
  then its padding: the mask a prefix (cuDNN takes it as key counts), and each row the K/V
  its token has in the unmasked context (bit for bit: the same per-token computation)."""
  cfg = CONFIGS["moe"]
  params = init_params(cfg, jax.random.key(0))
  feats = random_features(cfg, 3, 1)
  rng = np.random.default_rng(7)
  mask = {p.name: rng.random((3, p.max_len)) < 0.6 for p in cfg.pathways}
  mask[cfg.pathways[0].name][2] = False  # a pathway with no valid token
  encode = functools.partial(OneRecV2(cfg).apply, {"params": params}, method="encode")
  full, packed = encode(feats), encode(feats, {k: jnp.asarray(v) for k, v in mask.items()})
  valid = np.concatenate([mask[p.name] for p in cfg.pathways], 1)  # [B, N]
  counts = valid.sum(1)
  n = valid.shape[1]
  np.testing.assert_array_equal(packed["lengths"], counts)
  np.testing.assert_array_equal(full["lengths"], [n] * 3)
  assert len(packed["kv"]) == cfg.kv_sets
  for (k, v), (k_full, v_full) in zip(packed["kv"], full["kv"]):
    for i in range(3):
      order = np.concatenate([np.flatnonzero(valid[i]), np.flatnonzero(~valid[i])])
      np.testing.assert_array_equal(k[i], np.asarray(k_full[i])[order])
      np.testing.assert_array_equal(v[i], np.asarray(v_full[i])[order])


@pytest.mark.parametrize("name", ["dense", "moe"])
def test_float16_parity_with_torch(name):
  """FP16 compute. Both sides accumulate products in FP32 and round every op's result to
  FP16, but may round at different points inside fused elementwise chains (XLA fuses, torch
  does not), so intermediate values may differ by an FP16 ulp (2^-11 relative). The logits
  are themselves FP16 head outputs, so any upstream difference shows as whole ulps of the
  logit; through the residual layers a few ulps compound. Bound: 8 ulps of the largest
  |logit| (measured: 1-2 ulps), and every row's argmax is the reference's best up to that
  bound (near-ties may swap)."""
  cfg = CONFIGS[name].replace(dtype="float16")
  out, ref, _, _ = _both(cfg)
  for o, r in zip(out, ref):
    chex.assert_tree_all_finite(o)
    ulp = 2.0 ** (np.floor(np.log2(np.abs(r).max())) - 10)
    chex.assert_trees_all_close(o, r, rtol=0, atol=8 * ulp)
    picked = np.take_along_axis(r, np.asarray(o).argmax(-1)[:, None], -1)[:, 0]
    assert np.all(picked >= r.max(-1) - 8 * ulp)


@pytest.mark.parametrize("name", ["dense", "moe"])
def test_incremental_decoding_matches_full_forward(name):
  cfg = CONFIGS[name]
  params = init_params(cfg, jax.random.key(3))
  model = OneRecV2(cfg)
  feats, ids = random_features(cfg, 2), random_ids(cfg, 2)
  full = model.apply({"params": params}, feats, jnp.asarray(ids))
  ctx = model.apply({"params": params}, feats, method="encode")
  past = None
  inputs = np.concatenate([np.zeros((2, 1), np.int32), ids[:, :-1]], 1)[:, None, :]
  decode = _jit_decode(model)
  for t in range(cfg.levels):
    h, kv = decode({"params": params}, ctx, jnp.asarray(inputs[:, :, t:t + 1]), past)
    chex.assert_shape(h, (2, 1, 1, cfg.d_model))
    chex.assert_shape(kv[0][0], (2, 1, 1, cfg.n_heads, cfg.d_head))
    logits = model.apply({"params": params}, h[:, 0, 0], t, method="head")
    chex.assert_trees_all_close(logits, full[t], rtol=1e-5, atol=1e-5)
    past = extend(past, kv, jnp.zeros((2, 1), jnp.int32))
    assert past.positions == t + 1


def test_past_follows_the_ancestors():
  """Beams that branch and reorder read their own ancestors' K/V: each new beam's state
  equals decoding its whole prefix from scratch."""
  cfg = CONFIGS["moe"]
  params = init_params(cfg, jax.random.key(6))
  model = OneRecV2(cfg)
  ctx = model.apply({"params": params}, random_features(cfg, 1), method="encode")
  decode = _jit_decode(model)
  c1 = jnp.array([[[3], [0], [5]]], jnp.int32)  # [1, W=3, 1]: level-0 codes of 3 beams
  c2 = jnp.array([[[1], [2], [2], [4]]], jnp.int32)  # [1, W=4, 1]: level-1 codes
  parents = jnp.array([[2, 0, 1, 2]], jnp.int32)  # the 4 beams' parents among the 3
  _, kv0 = decode({"params": params}, ctx, jnp.zeros((1, 1, 1), jnp.int32), None)
  past = extend(None, kv0, jnp.zeros((1, 3), jnp.int32))  # BOS shared by the 3 beams
  _, kv1 = decode({"params": params}, ctx, c1, past)
  past = extend(past, kv1, parents)
  np.testing.assert_array_equal(past.rows, [[[0, 2], [0, 0], [0, 1], [0, 2]]])
  h2, _ = decode({"params": params}, ctx, c2, past)  # [1, 4, 1, D]
  prefixes = jnp.concatenate([jnp.zeros((1, 4, 1), jnp.int32), c1[:, parents[0]], c2], -1)
  full, _ = decode({"params": params}, ctx, prefixes, None)  # [1, 4, 3, D]
  chex.assert_trees_all_close(h2[:, :, 0], full[:, :, 2], rtol=1e-5, atol=1e-5)
  # A further step follows the ancestry through the earlier rows too.
  _, kv2 = decode({"params": params}, ctx, c2, past)
  deeper = extend(past, kv2, jnp.array([[3, 1]], jnp.int32))
  np.testing.assert_array_equal(deeper.rows, [[[0, 2, 3], [0, 0, 1]]])
  assert len(deeper.kv[0]) == 3 and deeper.kv[0][2][0].shape[1] == 4  # position 2: 4 rows


def test_beams_share_context_and_match_single_beam():
  """Decoding W beams against one request's context equals decoding each beam alone."""
  cfg = CONFIGS["moe"]
  params = init_params(cfg, jax.random.key(4))
  model = OneRecV2(cfg)
  feats = random_features(cfg, 1)
  ctx = model.apply({"params": params}, feats, method="encode")
  ids = jnp.asarray(random_ids(cfg, 5)[None, :, :1])  # [1, W=5, T=1] codes for position 1
  decode = _jit_decode(model)
  h0, _ = decode({"params": params}, ctx, jnp.zeros((1, 5, 1), jnp.int32))
  hw, _ = decode({"params": params}, ctx, jnp.concatenate(
      [jnp.zeros((1, 5, 1), jnp.int32), ids], -1))
  for w in range(5):
    hs, _ = decode({"params": params}, ctx, jnp.concatenate(
        [jnp.zeros((1, 1, 1), jnp.int32), ids[:, w:w + 1]], -1))
    chex.assert_trees_all_close(hw[:, w], hs[:, 0], rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(h0[:, 0], h0[:, 4])


def test_moe_routing_matches_reference_selection():
  cfg = CONFIGS["moe"]
  _, _, model, params = _both(cfg, batch=4)
  ref_sel = model.moe_selections()
  feats, ids = random_features(cfg, 4, 1), random_ids(cfg, 4, 2)
  _, state = OneRecV2(cfg).apply({"params": params}, feats, jnp.asarray(ids),
                                 mutable=["intermediates"])
  for layer, sel in ref_sel.items():
    (got,) = state["intermediates"][f"layer_{layer}"]["mlp"]["router"]["expert_ids"]
    # Same set per token (order within a token's top-k is by score in both).
    np.testing.assert_array_equal(np.sort(np.asarray(got), 1), np.sort(sel.numpy(), 1))


@pytest.mark.parametrize("case", ["all_on_one", "some_empty", "uniform"])
def test_moe_every_expert_gets_its_tokens(case):
  """MoE output equals a per-token loop over the chosen experts, whatever the routing."""
  cfg = CONFIGS["moe"]
  params = init_params(cfg, jax.random.key(7))
  e = cfg.n_routed_experts
  mlp = params["layer_2"]["mlp"]
  bias = {"all_on_one": jnp.zeros(e).at[5].set(100.0).at[1].set(90.0),
          "some_empty": jnp.zeros(e).at[:4].set(-100.0),
          "uniform": jnp.zeros(e)}[case]
  mlp = {**mlp, "router": {**mlp["router"], "score_bias": bias.astype(jnp.float16)}}
  from onerec_jax.model.onerec import MoE
  x = jax.random.normal(jax.random.key(8), (2, 3, 5, cfg.d_model))
  y, state = MoE(cfg).apply({"params": mlp}, x, mutable=["intermediates"])
  (ids,) = state["intermediates"]["router"]["expert_ids"]
  ids = np.asarray(ids)
  if case == "all_on_one":
    assert set(ids.ravel()) == {1, 5}
  if case == "some_empty":
    assert not set(ids.ravel()) & {0, 1, 2, 3}
  # Plain per-token reference from the raw weights.
  w = jax.tree.map(lambda a: np.asarray(a, np.float32), mlp)
  xt = np.asarray(x, np.float32).reshape(-1, cfg.d_model)
  logits = xt @ w["router"]["weight"].T
  scores = 1 / (1 + np.exp(-logits))
  ref = np.zeros_like(xt)
  for t in range(xt.shape[0]):
    g = scores[t, ids[t]]
    g = g / g.sum() * cfg.routed_scaling_factor
    for slot, ex in enumerate(ids[t]):
      gu = w["experts"]["gate_up_proj"]["weight"][ex] @ xt[t]
      a = gu[:cfg.expert_d_ff] / (1 + np.exp(-gu[:cfg.expert_d_ff])) * gu[cfg.expert_d_ff:]
      ref[t] += g[slot] * (w["experts"]["down_proj"]["weight"][ex] @ a)
    gu = w["shared_experts"]["gate_up_proj"]["weight"] @ xt[t]
    f = gu.shape[0] // 2
    ref[t] += w["shared_experts"]["down_proj"]["weight"] @ (gu[:f] / (1 + np.exp(-gu[:f]))
                                                            * gu[f:])
  chex.assert_trees_all_close(np.asarray(y).reshape(-1, cfg.d_model), ref, rtol=1e-4,
                              atol=1e-4)


def test_open_source_reads_safetensors_written_by_torch(tmp_path):
  from safetensors.torch import save_file
  cfg = CONFIGS["dense"]
  model = torch_model(cfg)
  save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
  params = torch_to_jax(open_source(tmp_path / "model.safetensors"), cfg)
  ref = torch_to_jax(StateDictSource(state_dict_numpy(model)), cfg)
  chex.assert_trees_all_equal(params, ref)
