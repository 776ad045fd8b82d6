"""The Triton top-k backend end to end on the CPU: TritonOps (chunk maxima, k-th largest,
the filters over rows and over the candidate buffer, the counts, the final rank sort),
the fused beam search and the router launcher, every kernel in Triton's interpreter
through the entry points' "triton" implementations (tests/triton_interpret.py), with
outputs poisoned so that an unwritten element shows. Small shapes and small configs, so
that each path of radix.select runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onerec_kernels import backend, topk
from onerec_kernels.topk import radix
from test_topk import BOUND, LOOSE, TIGHT, WIDE, _bits, _data
from triton_interpret import LAUNCHES, triton_kernels_on_cpu


@pytest.fixture(autouse=True)
def _triton_on_cpu(monkeypatch):
  triton_kernels_on_cpu(monkeypatch)


def _tg():
  from onerec_kernels.topk import triton_gpu
  return triton_gpu


def _assert_top_k(x, k, **kwargs):
  values, idx = topk.top_k(x, k, **kwargs)
  ref_values, ref_idx = jax.lax.top_k(x, k)
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
  np.testing.assert_array_equal(_bits(values), _bits(ref_values))


@pytest.mark.parametrize("kind,config,dtype,ran", [
    ("mixed", None, jnp.float32, {"_rank_kernel": None}),
    ("random", BOUND, jnp.float32, {"_chunk_max_kernel": None, "_kth_kernel": None,
                                    "_filter_kernel": False}),
    ("random", LOOSE, jnp.bfloat16, {"_counts_kernel": True, "_filter_kernel": True}),
    ("mixed", WIDE, jnp.float16, {"_counts_kernel": True}),
    ("mixed", TIGHT, jnp.float32, {"_counts_kernel": False}),
], ids=["whole", "bound", "buffer", "buffer-ties", "rows"])
def test_triton_ops_top_k_interpret(kind, config, dtype, ran):
  """Equal to lax.top_k bit for bit, and each case runs the kernels of the path it is named
  after: the whole row fits (one rank sort); chunk maxima, their k-th largest and the
  chunk-skipping filter; refinement over the candidate buffer (FROM_BUFFER), with ties,
  all-equal and -inf rows; refinement over whole rows. `ran` maps kernel -> FROM_BUFFER
  (None where the kernel has none) of launches that ran (radix.select's switch traces
  every branch and runs one)."""
  x = _data(kind, (5, 1037), dtype, seed=7)
  _assert_top_k(x, 16, impl="triton", config=config)
  seen = {(name, meta.get("FROM_BUFFER")) for name, meta in LAUNCHES}
  assert set(ran.items()) <= seen, seen


def test_triton_default_order_runs_the_kernels_on_long_rows():
  x = _data("mixed", (1, radix.DIRECT_SORT + 500), jnp.float32, seed=8)
  _assert_top_k(x, 5)
  assert {name for name, _ in LAUNCHES} >= {"_chunk_max_kernel", "_rank_kernel"}


@pytest.mark.parametrize("v,masked,config,ran", [
    (50, True, TIGHT, "_beam_scores_kernel"), (64, False, None, "_beam_filter_kernel"),
    (200, False, BOUND, "_kth_kernel")], ids=["masked-rows", "whole", "bound"])
def test_triton_beam_topk_interpret(v, masked, config, ran):
  """The fused beam kernels: the same selection as the reference, the values to
  rounding (the kernel's log_softmax is its own); ties in the beam scores. `ran`: a
  kernel of the case's path (the materialized scores of a refinement over whole rows;
  the fused filter; the bound)."""
  logits = jax.random.normal(jax.random.key(21), (2, 6, v)) * 3
  beam = jnp.round(jax.random.normal(jax.random.key(22), (2, 6)) * 10)  # ties; few beams win
  mask = jax.random.bernoulli(jax.random.key(23), 0.6, logits.shape) if masked else None
  values, idx = topk.beam_topk(logits, beam, 12, mask, impl="triton", config=config)
  ref_values, _ = topk.beam_topk_reference(logits, beam, 12, mask)
  scores = np.asarray(topk.beam_scores_reference(logits, beam, mask))
  np.testing.assert_allclose(values, ref_values, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(np.take_along_axis(scores, np.asarray(idx), 1), values,
                             rtol=1e-6, atol=1e-5)
  assert all(len(set(r)) == len(r) for r in np.asarray(idx).tolist())
  assert ran in {name for name, _ in LAUNCHES}


def test_triton_beam_topk_fully_masked_request_interpret():
  """A request with every candidate masked gets -inf scores (empty slots) and distinct
  indices, as the reference."""
  logits = jax.random.normal(jax.random.key(24), (2, 3, 40))
  mask = jnp.ones(logits.shape, bool).at[1].set(False)
  values, idx = topk.beam_topk(logits, jnp.zeros((2, 3)), 8, mask, impl="triton")
  ref_values, ref_idx = topk.beam_topk_reference(logits, jnp.zeros((2, 3)), 8, mask)
  assert np.all(np.isneginf(values[1])) and np.all(np.isneginf(ref_values[1]))
  np.testing.assert_array_equal(idx[1], ref_idx[1])


@pytest.mark.parametrize("score", topk.ROUTER_SCORES)
def test_triton_router_launcher_interpret(score):
  """router_top_k through its launcher (the plan's grid over 37 tokens, not a multiple of
  the token block) against the reference: bf16 logits, so ties, broken to the lowest
  expert."""
  logits = jax.random.normal(jax.random.key(25), (37, 20), jnp.bfloat16)
  bias = jnp.round(jax.random.normal(jax.random.key(26), (20,)) * 4) / 16
  ids, gates = topk.router_topk(logits, bias, 4, score, scaling=2.5, impl="triton")
  ref_ids, ref_gates = topk.router_topk_reference(logits, bias, 4, score, scaling=2.5)
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_allclose(gates, ref_gates, rtol=1e-6, atol=1e-7)


def test_triton_refuses_k_past_its_capacity_and_the_default_falls_back():
  """k above TRITON_MAX_K: the Triton implementation says Unsupported (naming the limit),
  and the default order, which would pick it for these long rows, runs the reference."""
  n, k = topk.TRITON_MAX_K + 100, topk.TRITON_MAX_K + 1
  x = _data("random", (1, n), jnp.float32, seed=9)
  with pytest.raises(backend.Unsupported, match=f"k={k} exceeds the kernels' 8192"):
    topk.top_k(x, k, impl="triton")
  values, idx = topk.top_k(x, k)
  ref = jax.lax.top_k(x, k)
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref[1]))
  logits = x.reshape(1, 2, n // 2)
  with pytest.raises(backend.Unsupported, match=f"k={k} exceeds"):
    topk.beam_topk(logits, jnp.zeros((1, 2)), k, impl="triton")
  got = topk.beam_topk(logits, jnp.zeros((1, 2)), k)
  for g, r in zip(got, topk.beam_topk_reference(logits, jnp.zeros((1, 2)), k)):
    np.testing.assert_array_equal(g, r)
