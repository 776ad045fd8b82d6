"""Beam widths and k at their limits: every implementation of every top-k entry point
refuses k outside [1, n] with the same error; widths above the Triton kernels' 8192 run
(the radix algorithm on the CPU, the reference fallback on the GPU) and generate serves
them; radix.Config.default fits any k; beam_search wider than its candidates fills the
extra slots as empty."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onerec_jax import generate as gen
from onerec_jax.config import preset
from onerec_jax.model import OneRecV2, init_params
from onerec_kernels import topk
from test_topk import _bits, _data

N = 12


def _calls(k, impl):
  """One call of each entry point on rows of N candidates."""
  x = jnp.arange(2 * N, dtype=jnp.float32).reshape(2, N)
  return {
      "top_k": lambda: topk.top_k(x, k, impl=impl),
      "beam_topk": lambda: topk.beam_topk(x.reshape(2, 3, 4), jnp.zeros((2, 3)), k, impl=impl),
      "router_topk": lambda: topk.router_topk(x, None, k, impl=impl),
  }


@pytest.mark.parametrize("op", ["top_k", "beam_topk", "router_topk"])
@pytest.mark.parametrize("k", [0, -1, N + 1, 2.0])
def test_every_impl_refuses_k_outside_1_n(op, k):
  table = {"top_k": topk.TOP_K, "beam_topk": topk.BEAM_TOPK, "router_topk": topk.ROUTER_TOPK}
  for impl in (None, *table[op].names):
    with pytest.raises(ValueError, match=rf"^k={k!r}: must be an integer in \[1, {N}\]$"):
      _calls(k, impl)[op]()


@pytest.mark.parametrize("n,k", [(1, 1), (100, 5), (8192, 8192), (9000, 8193),
                                 (20000, 16384), (1_000_000, 512), (1_000_000, 20000)])
def test_default_config_fits_any_k(n, k):
  cfg = topk.Config.default(n, k)
  pow2 = lambda v: v & (v - 1) == 0
  assert k <= cfg.capacity <= cfg.buffer and pow2(cfg.capacity) and pow2(cfg.buffer)


def test_default_config_values():
  """The heuristic as documented: short rows sort whole; long rows get a bound over at
  most 8192 chunks, 8 k (2048 to 8192) candidate slots, a buffer of up to 32768."""
  assert topk.Config.default(100, 5) == topk.Config(chunk=16, capacity=128)
  assert topk.Config.default(1_000_000, 512) == topk.Config(chunk=128, capacity=4096,
                                                            buffer=32768)
  assert topk.Config.default(9000, 8193) == topk.Config(chunk=16, capacity=16384)
  assert topk.Config.default(70_000, 1) == topk.Config(chunk=16, capacity=2048,
                                                       buffer=32768)


@pytest.mark.parametrize("k", [topk.TRITON_MAX_K + 1, 9000])
def test_radix_beyond_the_triton_capacity(k):
  """The GPU algorithm (radix, in plain JAX) with its default config at k > 8192 (k = n
  included), ties and -inf rows in the data."""
  x = _data("mixed", (3, 9000), jnp.float32, seed=4)
  values, idx = topk.top_k(x, k, impl="radix")
  ref_values, ref_idx = jax.lax.top_k(x, k)
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
  np.testing.assert_array_equal(_bits(values), _bits(ref_values))
  logits = x[:1].reshape(1, 3, 3000)
  got = topk.beam_topk(logits, jnp.zeros((1, 3)), k, impl="radix")
  for g, r in zip(got, topk.beam_topk_reference(logits, jnp.zeros((1, 3)), k)):
    np.testing.assert_array_equal(g, r)


# Codebooks whose first two levels fit in the beam: with W >= 2 * 64 the search keeps every
# prefix, so its result is the exact ranking of the 2 * 64 * 72 = 9216 triples (the GPU test
# widens the last level to 128, 16384 triples).
WIDE_CODEBOOKS = (2, 64, 72)


def _check_wide_generate(widths, codebooks=WIDE_CODEBOOKS):
  """generate at each width (> 8192) is the top of the exhaustive ranking (the full
  width's result), distinct triples with descending scores that teacher-forced forwards
  confirm. To rounding: another batch of beams may round the decoder's last bits otherwise
  (GPU matmul tilings), which can reorder candidates whose scores tie to within it."""
  cfg = preset("tiny").replace(codebook_sizes=codebooks, param_dtype="float32")
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(3))
  features = gen.random_contexts(cfg, 1, seed=5)
  total = int(np.prod(codebooks))
  full = gen.generate(params, cfg, features, beam_width=total)
  ids, scores = full.semantic_ids[0], full.scores[0]
  assert len({tuple(t) for t in ids.tolist()}) == total and np.all(np.diff(scores) <= 0)
  sample = np.arange(0, total, 1021)
  logits = OneRecV2(cfg).apply({"params": params},
                               {k: np.repeat(v, len(sample), 0) for k, v in features.items()},
                               jnp.asarray(ids[sample]))
  logp = sum(np.take_along_axis(np.asarray(jax.nn.log_softmax(l, -1)), ids[sample, j:j + 1],
                                1)[:, 0] for j, l in enumerate(logits))
  np.testing.assert_allclose(scores[sample], logp, rtol=1e-5, atol=1e-4)
  score_of = {tuple(t): s for t, s in zip(ids.tolist(), scores)}
  for width in widths:
    res = gen.generate(params, cfg, features, beam_width=width)
    got = [tuple(t) for t in res.semantic_ids[0].tolist()]
    assert len(set(got)) == width
    np.testing.assert_allclose(res.scores[0], scores[:width], rtol=1e-6, atol=1e-5)
    assert min(score_of[t] for t in got) >= scores[width - 1] - 1e-5  # all from the top


def test_generate_beyond_8192():
  _check_wide_generate([topk.TRITON_MAX_K + 1])


@pytest.mark.gpu
def test_generate_beyond_8192_gpu():
  """On the GPU the Triton top-k refuses k > 8192 and the default order runs the
  reference: the widths pass the input checks and run."""
  _check_wide_generate([topk.TRITON_MAX_K + 1, 16383], codebooks=(2, 64, 128))


@pytest.mark.gpu
@pytest.mark.parametrize("w", [topk.TRITON_MAX_K + 1, 16384])
def test_beam_topk_beyond_8192_gpu(w):
  """The default order at k > 8192 runs the reference: equal to it jitted alike."""
  logits = jax.random.normal(jax.random.key(6), (4, 64, 512)) * 3
  beam = jax.random.normal(jax.random.key(7), (4, 64))
  got = jax.jit(topk.beam_topk, static_argnames=("k",))(logits, beam, k=w)
  ref = jax.jit(topk.beam_topk_reference, static_argnames=("k",))(logits, beam, k=w)
  for g, r in zip(got, ref):
    np.testing.assert_array_equal(g, r)
  x = logits.reshape(4, -1)
  for g, r in zip(topk.top_k(x, w), jax.lax.top_k(x, w)):
    np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("constrained", [False, True])
def test_beam_search_wider_than_the_candidates_has_empty_slots(constrained):
  """beam_search (no input checks: generate refuses such a width) at a width above the
  candidates, 8 tuples or 5 valid items: the extra slots are empty (score -inf, semantic
  and item ids EMPTY), the others hold every candidate once, best first."""
  cfg = preset("tiny").replace(codebook_sizes=(2, 2, 2), param_dtype="float32")
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(8))
  ids, sem = gen.random_items(cfg, 5, seed=1)
  table = gen.build_item_table(ids, sem, cfg.codebook_sizes) if constrained else None
  f, m = gen.pad_batch(cfg, gen.random_contexts(cfg, 2, seed=1), None, 0, 2, 2)
  res = gen.beam_search(params, f, m, table, config=cfg, beam_width=10)
  n = 5 if constrained else 8
  scores, codes = np.asarray(res.scores), np.asarray(res.semantic_ids)
  assert np.all(np.isneginf(scores[:, n:])) and np.all(codes[:, n:] == gen.EMPTY)
  assert np.all(np.isfinite(scores[:, :n])) and np.all(np.diff(scores[:, :n]) <= 0)
  want = {tuple(t) for t in (sem.tolist() if constrained else np.ndindex(2, 2, 2))}
  for row in codes[:, :n]:
    assert {tuple(t) for t in row.tolist()} == want
  if constrained:
    assert np.all(np.asarray(res.item_ids)[:, n:] == gen.EMPTY)
    assert set(np.asarray(res.item_ids)[0, :n].tolist()) == set(ids.tolist())
