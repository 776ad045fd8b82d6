"""Top-k ops against jax.lax.top_k and the plain-JAX references.

CPU: the GPU algorithm in plain JAX (impl="radix") at small shapes, with small configs so
that every path runs (whole-row sort, chunk-maximum bound, radix refinement); the Triton
kernels of the filter and the router in Triton's interpreter, launched with the grids and
constexprs of triton_gpu's *_plan functions. GPU (marked): the Triton kernels at real
shapes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from onerec_kernels import topk
from onerec_kernels.topk import radix
from triton_interpret import interpreted

FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)
# Small configs that take each path at n in the hundreds: the bound's candidates fit;
# refinement over the candidate buffer; refinement over whole rows.
BOUND = topk.Config(chunk=4, capacity=64)
LOOSE = topk.Config(chunk=64, capacity=16, buffer=256)
WIDE = topk.Config(chunk=4, capacity=16, buffer=2048)
TIGHT = topk.Config(chunk=4, capacity=16)


@functools.partial(jax.jit, static_argnames=("k", "impl", "config"))
def _top_k(x, k, impl, config):
  return topk.top_k(x, k, impl=impl, config=config)


def _bits(v):
  """Values as raw bits, so NaN payloads and signed zeros compare exactly."""
  v = np.asarray(v)
  return v.view(np.uint32 if v.dtype.itemsize == 4 else np.uint16)


def _check(x, k, impl="radix", config=None):
  values, idx = _top_k(x, k, impl, config)
  ref_values, ref_idx = jax.lax.top_k(x, k)
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx))
  np.testing.assert_array_equal(_bits(values), _bits(ref_values))
  assert values.dtype == x.dtype and idx.dtype == jnp.int32


def _data(kind, shape, dtype, seed=0):
  """Random normals, or "mixed": rows of heavy ties, all equal, all -inf, scattered -inf,
  random, in turn."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape)
  if kind == "mixed":
    rows = np.arange(shape[0])[:, None] % 5
    x = np.where(rows == 0, rng.integers(-3, 3, shape), x)
    x = np.where(rows == 1, 0.5, x)
    x = np.where((rows == 2) | ((rows == 3) & (rng.random(shape) < 0.3)), -np.inf, x)
  return jnp.asarray(x, dtype)


@pytest.mark.parametrize("kind,config,dtype", [
    ("mixed", None, jnp.float32), ("random", BOUND, jnp.float32),
    ("random", LOOSE, jnp.float32), ("mixed", WIDE, jnp.float32),
    ("mixed", TIGHT, jnp.float32), ("mixed", TIGHT, jnp.bfloat16),
    ("mixed", TIGHT, jnp.float16)],
    ids=["whole", "bound", "buffer", "buffer-ties", "rows", "rows-bf16", "rows-f16"])
def test_radix_matches_lax(kind, dtype, config):
  _check(_data(kind, (5, 1000 + 37), dtype), 16, config=config)


@pytest.mark.parametrize("n,k", [(1, 1), (7, 7), (300, 1), (300, 300), (2000, 1024)])
def test_radix_k_extremes(n, k):
  config = topk.Config(chunk=2, capacity=1024) if n == 2000 else None
  _check(_data("mixed", (2, n), jnp.float32), k, config=config)


def test_radix_nan_inf_signed_zero_order():
  special = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, np.nan]
  x = jnp.asarray(np.tile(np.array(special, np.float32), (2, 40)))
  for dtype in FLOATS:
    _check(x.astype(dtype), 64, config=BOUND)


def test_keys_round_trip_and_order():
  x = jnp.asarray([-np.inf, -2.0, -0.0, 0.0, 1e-3, 3.0, np.inf], jnp.float32)
  for dtype in FLOATS:
    keys = radix.to_keys(x.astype(dtype))
    assert bool(jnp.all(keys[1:] > keys[:-1]))
    np.testing.assert_array_equal(_bits(radix.from_keys(keys, dtype)), _bits(x.astype(dtype)))


def test_default_entry_point_is_reference_off_gpu():
  x = _data("random", (4, 100), jnp.float32)
  if jax.default_backend() != "gpu":
    for got, ref in zip(topk.top_k(x, 5), jax.lax.top_k(x, 5)):
      np.testing.assert_array_equal(got, ref)
  with pytest.raises(ValueError):
    topk.top_k(x, 5, impl="sort")


@settings(max_examples=8, deadline=None)
@given(n=st.integers(1, 200), data=st.data())
def test_radix_property(n, data):
  k = data.draw(st.integers(1, n))
  dtype = data.draw(st.sampled_from(FLOATS))
  pool = np.array([-np.inf, -1.5, -0.0, 0.0, 0.25, 2.0, np.inf, np.nan], np.float32)
  picks = data.draw(st.lists(st.integers(0, 7), min_size=2 * n, max_size=2 * n))
  x = jnp.asarray(pool[np.array(picks)].reshape(2, n), dtype)
  capacity = data.draw(st.sampled_from([radix._pow2(k), 2 * radix._pow2(k)]))
  buffer = capacity * data.draw(st.sampled_from([1, 4]))
  chunk = data.draw(st.sampled_from([1, 2, 4, 16]))
  _check(x, k, config=topk.Config(chunk=chunk, capacity=capacity, buffer=buffer))


@pytest.mark.parametrize("masked,ties", [(False, False), (True, False), (False, True)])
def test_beam_topk_radix_matches_reference(masked, ties):
  key = jax.random.key(1)
  logits = jax.random.normal(key, (2, 6, 50)) * 3
  beam = jax.random.normal(jax.random.key(2), (2, 6)) * 10  # top-k packed in few beams
  if ties:  # equal logits within and across beams, equal beam scores: the lowest index wins
    logits, beam = jnp.round(logits), jnp.round(beam / 5)
  mask = jax.random.bernoulli(jax.random.key(3), 0.6, logits.shape) if masked else None
  got = topk.beam_topk(logits, beam, 12, mask, impl="radix", config=TIGHT)
  ref = topk.beam_topk_reference(logits, beam, 12, mask)
  for g, r in zip(got, ref):
    np.testing.assert_array_equal(g, r)


def _router_numpy(logits, bias, k, score, scaling):
  """Routing written in float64 numpy: experts by choice score (score + bias), ties to the
  lowest expert (a stable sort), gates from the unbiased scores normalized over the
  chosen ones (+1e-20), times scaling."""
  x = np.asarray(logits, np.float64)
  scores = (1 / (1 + np.exp(-x)) if score == "sigmoid"
            else np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True)).sum(
                1, keepdims=True))
  choice = scores + (0 if bias is None else np.asarray(bias, np.float64))
  ids = np.argsort(-choice, axis=1, kind="stable")[:, :k]
  gates = np.take_along_axis(scores, ids, 1)
  return ids, gates / (gates.sum(1, keepdims=True) + 1e-20) * scaling


@pytest.mark.parametrize("score", topk.ROUTER_SCORES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_router_rounds_match_reference(score, with_bias):
  """The radix router (k rounds of a row maximum) and the reference against routing
  written in numpy: bf16 logits tie often (37 of the 64 rows within their top 4), the bias
  takes multiples of 1/16."""
  logits = jax.random.normal(jax.random.key(4), (64, 53), jnp.bfloat16)
  bias = (jnp.round(jax.random.normal(jax.random.key(5), (53,)) * 2) / 16 if with_bias
          else None)
  want_ids, want_gates = _router_numpy(logits, bias, 3, score, 2.5)
  for impl in ("radix", "reference"):
    ids, gates = topk.router_topk(logits, bias, 3, score, scaling=2.5, impl=impl)
    np.testing.assert_array_equal(ids, want_ids, err_msg=impl)
    np.testing.assert_allclose(gates, want_gates, rtol=2e-6, err_msg=impl)


# CPU: the Triton kernels in Triton's interpreter, on torch tensors. -----------------------


@pytest.fixture(scope="module")
def tg():
  """triton_gpu with its kernels in the interpreter."""
  return interpreted("onerec_kernels.topk.triton_gpu")


def _torch(a):
  """A torch CPU tensor of a's values and dtype (bfloat16 and uint32 included)."""
  import torch
  a = np.array(a)
  if a.dtype == jnp.bfloat16:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(a)


def _zeros(shape, dtype):
  import torch
  return torch.zeros(shape, dtype=getattr(torch, np.dtype(dtype).name))


def _candidate_set(keys, idx, count, capacity):
  """Sorted (key, index) pairs of each row's stored candidates."""
  return [sorted(zip(k[:min(c, capacity)].tolist(), i[:min(c, capacity)].tolist()))
          for k, i, c in zip(np.asarray(keys), np.asarray(idx), np.asarray(count))]


def _assert_same_candidates(got, want, capacity):
  """Counts equal; where a row's candidates fit, the same (key, index) pairs as want; where
  they overflow, stored pairs that want has too (the kernel's order is arbitrary)."""
  np.testing.assert_array_equal(np.asarray(got[2]), np.asarray(want[2]))
  full = _candidate_set(*want[:2], np.full_like(np.asarray(want[2]), capacity), capacity)
  for g, w, f, c in zip(_candidate_set(*got, capacity), _candidate_set(*want, capacity),
                        full, np.asarray(want[2])):
    assert g == w if c <= capacity else set(g) <= set(f)


def _kth_composite(x, k):
  """(key, rank) [R] of each row's k-th largest composite key, as uint32."""
  keys = np.asarray(radix.to_keys(x)).astype(np.uint64)
  n = x.shape[1]
  comp = np.sort((keys << 32) | (n - np.arange(n, dtype=np.uint64)), axis=1)[:, n - k]
  return (comp >> 32).astype(np.uint32), (comp & 0xFFFFFFFF).astype(np.uint32)


def _run_filter(tg, x, maxima, chunk, th_key, th_rank, capacity, span, block=2048):
  """_filter_kernel over rows x [R, N] as TritonOps.filter launches it."""
  r, n = x.shape
  programs, _, meta = tg._filter_plan(n, block, span, chunk)
  out = (_zeros((r, capacity), np.uint32), _zeros((r, capacity), np.int32),
         _zeros((r,), np.int32))
  none = _zeros((1,), np.int32)
  tg._filter_kernel[(r, programs)](
      _torch(x), none, none, _torch(maxima) if chunk else none, _torch(th_key),
      _torch(th_rank), *out, N=n, M=n, C=capacity, BITS=radix.key_bits(x.dtype),
      FROM_BUFFER=False, **meta)
  return tuple(o.numpy() for o in out)


@pytest.mark.parametrize("dtype,chunk,span", [(jnp.float32, 16, 2048),
                                              (jnp.bfloat16, 512, 1024),
                                              (jnp.float32, 0, 0)],
                         ids=["f32-step32chunks", "bf16-step1chunk", "no-skip"])
def test_interpreted_filter_skips_chunks(tg, dtype, chunk, span):
  """The filter kernel equals JaxOps.filter for the bound and for an exact composite
  threshold; chunks below the threshold are not read (they hold +inf here, unseen)."""
  x = _data("mixed", (5, 2 * 2048 + 37), jnp.float32, seed=3)  # [R, N]
  ramp = np.where(np.arange(5)[:, None] >= 3, np.linspace(0, 10, x.shape[1]), 0)
  x = (x + ramp).astype(dtype)  # random rows: the top near the end, most steps dead
  maxima = radix.JaxOps.chunk_max(x, chunk or 16)  # [R, P]
  k, capacity = min(20, maxima.shape[1] // 2), 1024
  bound = radix.JaxOps.kth_largest(maxima, k)
  for th_key, th_rank in ((bound, jnp.zeros_like(bound)), _kth_composite(x, k)):
    want = radix.JaxOps.filter(x, jnp.asarray(th_key), jnp.asarray(th_rank), capacity)
    poisoned = x
    if chunk:  # steps read only if live: dead ones to +inf, which reaches any threshold
      per_step = tg._filter_plan(x.shape[1], 2048, span, chunk)[2]["PER_STEP"]
      m = np.pad(maxima, ((0, 0), (0, -maxima.shape[1] % per_step)))
      dead = np.max(m.reshape(len(m), -1, per_step), axis=2) < np.asarray(th_key)[:, None]
      dead = np.repeat(dead, per_step * chunk, axis=1)[:, :x.shape[1]]  # [R, N]
      assert dead.any()
      poisoned = jnp.where(dead, jnp.inf, x).astype(dtype)
    got = _run_filter(tg, poisoned, maxima, chunk, th_key, th_rank, capacity, span)
    _assert_same_candidates(got, want, capacity)
    skip = radix.JaxOps.filter(x, jnp.asarray(th_key), jnp.asarray(th_rank), capacity,
                               maxima, chunk or 16)
    _assert_same_candidates(skip, want, capacity)


@pytest.mark.parametrize("v,chunk,masked", [(1000, 64, False), (2048, 128, True)])
def test_interpreted_beam_filter_skips_chunks(tg, v, chunk, masked):
  """Fused beam kernels: the statistics and materialized scores match the reference, and
  the skipping filter equals JaxOps.filter on the kernel's own scores (dead chunks of the
  logits poisoned as above)."""
  b, w, k, capacity = 2, 3, 8, 512
  logits = jax.random.normal(jax.random.key(11), (b, w, v)) * 3
  beam = jax.random.normal(jax.random.key(12), (b, w))
  mask = jax.random.bernoulli(jax.random.key(13), 0.7, logits.shape) if masked else None
  plan = tg._beam_plan(v, chunk)
  meta = dict(V=v, HAS_MASK=masked)
  inputs = [_torch(logits), _torch(beam),
            _torch(mask.astype(jnp.int8)) if masked else _zeros((1,), np.int32)]
  maxima = _zeros((b, w * plan["G"]), np.uint32)
  mx, ls = _zeros((b * w,), np.float32), _zeros((b * w,), np.float32)
  tg._beam_stats_kernel[(b * w,)](*inputs, maxima, mx, ls, G=plan["G"],
                                  CHUNK=plan["CHUNK"], **meta)
  scores = _zeros((b, w * v), np.float32)
  tg._beam_scores_kernel[(b * w,)](*inputs, mx, ls, scores, BLOCK_V=plan["BLOCK_V"], **meta)
  np.testing.assert_allclose(scores.numpy(), topk.beam_scores_reference(logits, beam, mask),
                             rtol=1e-6, atol=1e-5)
  th_key = np.sort(maxima.numpy(), axis=1)[:, -k]  # [B], the bound
  want = radix.JaxOps.filter(jnp.asarray(scores.numpy()), jnp.asarray(th_key),
                             jnp.zeros(b, jnp.uint32), capacity)
  steps = maxima.numpy().reshape(b, w, plan["STEPS"], -1).max(axis=3)  # [B, W, STEPS]
  dead = (steps < th_key[:, None, None])[..., np.arange(v) // plan["STEP"]]  # [B, W, V]
  assert dead.any()
  inputs[0] = _torch(jnp.where(dead, 1e30, logits))
  out = (_zeros((b, capacity), np.uint32), _zeros((b, capacity), np.int32),
         _zeros((b,), np.int32))
  tg._beam_filter_kernel[(b * w,)](
      *inputs, mx, ls, maxima, _torch(th_key), _zeros((b,), np.uint32), *out, W=w,
      G=plan["G"], STEP=plan["STEP"], STEPS=plan["STEPS"], C=capacity, **meta)
  _assert_same_candidates(tuple(o.numpy() for o in out), want, capacity)


def _router_data(t, e, dtype, seed):
  """Logits [t, e]: rows of heavy ties (a few values), random, random with -inf, all -inf,
  in turn; a bias [e] of a few values (ties survive it)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((t, e))
  rows = np.arange(t)[:, None] % 4
  x = np.where(rows == 0, rng.integers(-2, 3, (t, e)) * 0.5, x)
  x = np.where((rows == 3) | ((rows == 2) & (rng.random((t, e)) < 0.3)), -np.inf, x)
  return jnp.asarray(x, dtype), jnp.asarray(rng.integers(-2, 3, e) * 0.25, jnp.float32)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # -inf - -inf: NaN
@pytest.mark.parametrize("method", ["rounds", "composite", "bitonic"])
@pytest.mark.parametrize("t,e,k,dtype,tokens", [(37, 53, 3, jnp.float32, 0),
                                                (11, 256, 8, jnp.bfloat16, 0),
                                                (37, 7, 1, jnp.float32, 16),
                                                (37, 7, 3, jnp.bfloat16, 0)])
def test_interpreted_router_matches_reference(tg, method, t, e, k, dtype, tokens):
  """Ids identical to router_topk_reference (ties to the lowest expert), gates to rounding;
  T is no multiple of the token block. The scores and gates are shared by the methods:
  each score with and without bias for the default method, two of these for the others
  (the interpreter is slow)."""
  import torch
  logits, bias = _router_data(t, e, dtype, seed=e + k)
  grid, _, meta = tg._router_plan(t, e, k, method, tokens)
  cases = [(score, b) for score in topk.ROUTER_SCORES for b in (None, bias)]
  for score, b in cases if method == "rounds" else cases[1:3]:
    ids, gates = torch.zeros((t, k), dtype=torch.int32), torch.zeros((t, k))
    tg._router_kernel[grid](_torch(logits), _torch(b) if b is not None else ids, ids, gates,
                            SCALING=2.5, SOFTMAX=score == "softmax", HAS_BIAS=b is not None,
                            NORM=True, **meta)
    ref_ids, ref_gates = topk.router_topk_reference(logits, b, k, score, scaling=2.5)
    np.testing.assert_array_equal(ids.numpy(), ref_ids, err_msg=f"{score}, {b is None}")
    np.testing.assert_allclose(gates.numpy(), ref_gates, rtol=1e-6, atol=1e-7)


# GPU: the Triton kernels. -------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", ["random", "mixed"])
@pytest.mark.parametrize("n,k", [(100, 100), (8192, 512), (1_000_003, 1000)])
def test_triton_top_k_exact(kind, dtype, n, k):
  _check(_data(kind, (5, n), dtype), k, impl="triton")


@pytest.mark.gpu
def test_triton_top_k_beam_shape_and_nan():
  _check(_data("random", (32, 512 * 8192), jnp.float32), 512, impl="triton")
  special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0], np.float32)
  x = jnp.asarray(np.tile(special, (3, 5000)))
  for dtype in FLOATS:
    _check(x.astype(dtype), 700, impl="triton")
  _check(_data("random", (5, 70_000), jnp.float32), 1, impl="triton")


def _assert_same_selection(got, ref, scores):
  """Kernel and reference log_softmax may differ in the last bits: the values agree to
  rounding and each chosen index's reference score is its reported score."""
  (values, idx), (ref_values, _) = got, ref
  np.testing.assert_allclose(values, ref_values, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(np.take_along_axis(np.asarray(scores), np.asarray(idx), 1),
                             values, rtol=1e-6, atol=1e-5)
  assert all(len(set(row)) == len(row) for row in np.asarray(idx).tolist())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("w,spread,masked", [(128, 1.0, False), (512, 1.0, True),
                                              (256, 30.0, False), (7, 1.0, True)])
def test_triton_beam_topk(dtype, w, spread, masked):
  logits = (jax.random.normal(jax.random.key(6), (4, w, 8192)) * 4).astype(dtype)
  beam = jax.random.normal(jax.random.key(7), (4, w)) * spread  # 30: few beams win
  mask = jax.random.bernoulli(jax.random.key(8), 0.5, logits.shape) if masked else None
  got = jax.jit(topk.beam_topk, static_argnames=("k", "impl"))(
      logits, beam, k=w, valid_mask=mask, impl="triton")
  ref = topk.beam_topk_reference(logits, beam, w, mask)
  _assert_same_selection(got, ref, topk.beam_scores_reference(logits, beam, mask))


@pytest.mark.gpu
@pytest.mark.parametrize("method", [None, "composite", "bitonic"])  # None: the default
@pytest.mark.parametrize("t,e,k", [(16384, 53, 3), (32768, 256, 8), (1000, 256, 16)])
@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
def test_triton_router(t, e, k, score, method):
  logits = jax.random.normal(jax.random.key(9), (t, e), jnp.bfloat16)
  bias = jax.random.normal(jax.random.key(10), (e,)) * 0.01
  if method is None:
    got = topk.router_topk(logits, bias, k, score, scaling=2.5, impl="triton")
  else:
    from onerec_kernels.topk import triton_gpu
    got = triton_gpu.router_top_k(logits, bias, k, score, True, 2.5, method=method)
  ref = topk.router_topk_reference(logits, bias, k, score, scaling=2.5)
  choice = np.asarray(topk.router_scores_reference(logits, score) + bias)  # [T, E]
  ids, ref_ids = np.asarray(got[0]), np.asarray(ref[0])
  np.testing.assert_allclose(np.take_along_axis(choice, ids, 1),  # same choice to rounding
                             np.take_along_axis(choice, ref_ids, 1), rtol=1e-6)
  same = np.all(ids == ref_ids, axis=1)
  assert same.mean() > 0.999
  np.testing.assert_allclose(np.asarray(got[1])[same], np.asarray(ref[1])[same], rtol=1e-5,
                             atol=1e-6)
