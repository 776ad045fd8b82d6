"""Hypothesis property tests of every kernel entry point against its reference, on the CPU:
the Pallas Mosaic GPU kernels in Mosaic GPU's interpret mode, the Triton kernels in
Triton's interpreter (tests/triton_interpret.py), both with poisoned outputs (interpret
mode fills unwritten buffers with NaN; the Triton launcher with NaN or all-ones bits), so
an element a kernel leaves unwritten fails the comparison. Random shapes, empty expert
groups, k = n, all-masked rows, NaN and Inf inputs. Shapes are tiny and examples few:
interpret mode is slow."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

import fp8_spec
from onerec_kernels import backend, topk
from onerec_kernels.fp8_linear import fp8_linear
from onerec_kernels.gemm_mgpu import testing
from onerec_kernels.grouped_gemm import fp8_grouped_gemm, grouped_gemm
from onerec_kernels.quantize import (RMSNormOf, RowsOf, SwiGLUOf, quantize_activations,
                                     quantize_blocks, quantize_rows)
from test_topk import _bits
from triton_interpret import triton_kernels_on_cpu

SPECIALS = (np.nan, np.inf, -np.inf, 0.0, 3e4, 1e-30)


def _examples(n: int):
  """Hypothesis settings: n examples, no deadline, and no shrinking (interpret mode is
  slow: shrinking one failure took 5 minutes; the failing example is reported as found,
  and replayed first on the next run from the example database)."""
  return settings(max_examples=n, deadline=None,
                  phases=(Phase.explicit, Phase.reuse, Phase.generate),
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _triton_on_cpu(monkeypatch):
  triton_kernels_on_cpu(monkeypatch)


def _array(data, shape, specials=SPECIALS, dtype=np.float32):
  """Normal values, each row its own magnitude (1e-3 to 1e3), some replaced by specials."""
  rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
  x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape[:-1] + (1,))
  flat = x.reshape(-1)
  if specials:
    for i, v in data.draw(st.lists(st.tuples(st.integers(0, flat.size - 1),
                                             st.sampled_from(specials)), max_size=3),
                          label="specials"):
      flat[i] = v
  return x.astype(dtype)


def _nan_rows(y) -> np.ndarray:
  return np.isnan(np.asarray(y, np.float32)).any(axis=-1)


@_examples(8)
@given(data=st.data())
def test_quantize_activations_property(data):
  """The Triton kernel (every producer, gathered or not, per token or 1 x 128) equals the
  reference: plain inputs bit for bit, NaN included; RMSNorm / SwiGLU scales to rounding
  and values within one FP8 step (the kernel's rsqrt / exp are its own), NaN at the same
  places."""
  kind = data.draw(st.sampled_from(["plain", "rmsnorm", "swiglu"]), label="kind")
  block = data.draw(st.sampled_from([None, 128]), label="block")
  r, k = data.draw(st.integers(1, 5), label="rows"), data.draw(st.integers(1, 300), label="k")
  x = jnp.asarray(_array(data, (r, 2 * k if kind == "swiglu" else k)))
  src = {"plain": x, "rmsnorm": RMSNormOf(x, jnp.linspace(0.5, 2.0, k)),
         "swiglu": SwiGLUOf(x)}[kind]
  if data.draw(st.booleans(), label="gather"):
    src = RowsOf(src, jnp.asarray(data.draw(st.lists(st.integers(0, r - 1), min_size=1,
                                                     max_size=7)), jnp.int32))
  q, s = quantize_activations(src, block=block, impl="triton")
  q_ref, s_ref = quantize_activations(src, block=block, impl="reference")
  if kind == "plain":
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s_ref))
    np.testing.assert_array_equal(fp8_spec.fp8_bytes(np.asarray(q)),
                                  fp8_spec.fp8_bytes(np.asarray(q_ref)))
    return
  np.testing.assert_allclose(np.asarray(s), np.asarray(s_ref), rtol=1e-6)
  qf, qr = (np.asarray(a.astype(jnp.float32)) for a in (q, q_ref))
  np.testing.assert_array_equal(np.isnan(qf), np.isnan(qr))
  ok = ~np.isnan(qr)
  assert np.all(np.abs(qf[ok] - qr[ok]) <= np.abs(qr[ok]) / 8 + 2.0 ** -9)


def _reference(f, *args):
  with backend.use("reference"):
    return f(*args)


@_examples(3)
@given(data=st.data())
def test_fp8_linear_property(data):
  """The GPU path (Triton quantization, Mosaic GEMM) against the reference mode: within
  the GEMM's error bound on the same FP8 operands; a row whose input holds a NaN or Inf
  is NaN in both, the others finite."""
  m, n = data.draw(st.integers(1, 70), label="m"), data.draw(st.integers(1, 80), label="n")
  k = data.draw(st.sampled_from([64, 128, 200, 256]), label="k")
  x = jnp.asarray(_array(data, (m, k), specials=(np.nan, np.inf, 0.0)))
  w_q, w_s = quantize_rows(jnp.asarray(_array(data, (n, k), specials=(0.0,))) * 0.05)
  with backend.interpret():
    out = fp8_linear(x, w_q, w_s, out_dtype=jnp.float32, impl="mosaic")
  ref = _reference(lambda: fp8_linear(x, w_q, w_s, out_dtype=jnp.float32))
  bad = _nan_rows(ref)
  np.testing.assert_array_equal(np.isnan(np.asarray(out)).all(-1), bad)
  assert bad.tolist() == np.asarray(~jnp.isfinite(x).all(-1)).tolist()
  if (~bad).any():
    ops = (*quantize_rows(x[~bad]), w_q, w_s)
    testing.assert_within(out[~bad], ref[~bad], testing.fp8_linear_error_bound(*ops),
                          testing.fp8_linear_rel_tol(k))


def _groups(data, max_rows=90):
  """Group sizes (zeros among them) and the rows that hold them plus padding rows."""
  sizes = data.draw(st.lists(st.integers(0, 40), min_size=1, max_size=4), label="sizes")
  rows = sum(sizes) + data.draw(st.integers(0, 10), label="padding")
  return jnp.asarray(sizes, jnp.int32), max(rows, 1)


@_examples(3)
@given(data=st.data())
def test_grouped_gemm_property(data):
  """The 16-bit Mosaic grouped GEMM against the reference: empty groups, rows past the
  groups (zero), N and K off the tiles."""
  sizes, m = _groups(data)
  n, k = data.draw(st.integers(1, 72), label="n"), data.draw(st.sampled_from([64, 128, 200]))
  x = jnp.asarray(_array(data, (m, k), specials=(0.0,)), jnp.bfloat16)
  w = jnp.asarray(_array(data, (len(sizes), n, k), specials=(0.0,)), jnp.bfloat16)
  with backend.interpret():
    out = grouped_gemm(x, w, sizes, out_dtype=jnp.float32, impl="mosaic")
  ref = grouped_gemm(x, w, sizes, out_dtype=jnp.float32, impl="reference")
  # Both sum the same exact bf16 products in FP32, in different orders: each is within
  # k 2^-24 of the magnitude sum of the exact value (one rounding per addition).
  mag = grouped_gemm(jnp.abs(x), jnp.abs(w), sizes, out_dtype=jnp.float32, impl="reference")
  testing.assert_within(out, ref, 2 * k * 2.0**-24 * mag, k**0.5 * 2.0**-20)
  assert np.all(np.asarray(out)[int(sizes.sum()):] == 0)


@_examples(3)
@given(data=st.data())
def test_fp8_grouped_gemm_property(data):
  """The GPU path (Triton 1 x 128 quantization, Mosaic block-scaled grouped GEMM) against
  the reference mode: within the bound on the same FP8 operands; empty groups; a NaN or
  Inf makes its row NaN in both, rows past the groups included (their NaN scale meets the
  zero weight scale); other rows past the groups zero."""
  sizes, m = _groups(data)
  n, k = data.draw(st.integers(1, 72), label="n"), data.draw(st.sampled_from([128, 200, 256]))
  x = jnp.asarray(_array(data, (m, k), specials=(np.nan, -np.inf, 0.0)))
  w_q, w_s = quantize_blocks(jnp.asarray(_array(data, (len(sizes), n, k), specials=(0.0,)))
                             * 0.05, 128, 128)
  with backend.interpret():
    out = fp8_grouped_gemm(x, w_q, w_s, sizes, out_dtype=jnp.float32, impl="mosaic")
  ref = _reference(lambda: fp8_grouped_gemm(x, w_q, w_s, sizes, out_dtype=jnp.float32))
  total = int(sizes.sum())
  bad = _nan_rows(ref)
  np.testing.assert_array_equal(_nan_rows(out), bad)
  assert bad.tolist() == np.asarray(~jnp.isfinite(x).all(-1)).tolist()
  assert np.all(np.asarray(out)[total:][~bad[total:]] == 0)
  keep = np.flatnonzero(~bad)
  if keep.size:
    x_q, x_s = quantize_blocks(x, 1, 128)
    bound = testing.fp8_grouped_error_bound(x_q, x_s, w_q, w_s, sizes)
    testing.assert_within(out[keep], ref[keep], bound[keep], testing.FP8_GROUPED_REL_TOL)


def _config(data, k):
  """A radix config that reaches the bound and the refinements at these sizes."""
  capacity = data.draw(st.sampled_from([topk.radix._pow2(k), 2 * topk.radix._pow2(k)]))
  return topk.Config(chunk=data.draw(st.sampled_from([1, 4, 16])), capacity=capacity,
                     buffer=capacity * data.draw(st.sampled_from([1, 4])))


def _assert_same(got, want):
  for g, w in zip(got, want):
    np.testing.assert_array_equal(_bits(g), _bits(w))


@_examples(6)
@given(data=st.data())
def test_top_k_property(data):
  """Triton and radix equal lax.top_k bit for bit: NaN, Inf and ties (values from a small
  pool), k up to n."""
  n = data.draw(st.integers(1, 300), label="n")
  k = data.draw(st.integers(1, n), label="k")
  dtype = data.draw(st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]))
  pool = np.array([-np.inf, -1.5, -0.0, 0.0, 0.25, 2.0, np.inf, np.nan], np.float32)
  picks = data.draw(st.lists(st.integers(0, 7), min_size=2 * n, max_size=2 * n))
  x = jnp.asarray(np.where(np.arange(2 * n) % 3 == 0, pool[np.array(picks)],
                           _array(data, (2 * n,), specials=())).reshape(2, n), dtype)
  config = _config(data, k)
  want = topk.top_k(x, k, impl="reference")
  for impl in ("triton", "radix"):
    _assert_same(topk.top_k(x, k, impl=impl, config=config), want)


@_examples(5)
@given(data=st.data())
def test_beam_topk_property(data):
  """Triton (the fused kernels) and radix against the reference: the same selection
  (values to rounding for Triton's own log_softmax, bit for bit for radix); masks with
  all-masked beams and requests; -inf logits; k = W * V allowed."""
  b, w = data.draw(st.integers(1, 3), label="b"), data.draw(st.integers(1, 5), label="w")
  v = data.draw(st.integers(1, 70), label="v")
  k = data.draw(st.integers(1, w * v), label="k")
  logits = jnp.asarray(_array(data, (b, w, v), specials=(-np.inf, 0.0)))
  beam = jnp.asarray(np.round(_array(data, (b, w), specials=(-np.inf,))))
  mask = None
  if data.draw(st.booleans(), label="masked"):
    keep = data.draw(st.floats(0.0, 1.0), label="keep")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    mask = jnp.asarray(rng.random((b, w, v)) < keep)  # keep 0: every candidate masked
  config = _config(data, k)
  want = topk.beam_topk(logits, beam, k, mask, impl="reference")
  _assert_same(topk.beam_topk(logits, beam, k, mask, impl="radix", config=config), want)
  values, idx = topk.beam_topk(logits, beam, k, mask, impl="triton", config=config)
  scores = np.asarray(topk.beam_scores_reference(logits, beam, mask))
  np.testing.assert_allclose(values, want[0], rtol=1e-6, atol=1e-5)
  finite = np.isfinite(np.asarray(want[0]))
  np.testing.assert_allclose(np.take_along_axis(scores, np.asarray(idx), 1)[finite],
                             np.asarray(values)[finite], rtol=1e-6, atol=1e-5)
  assert all(len(set(r)) == len(r) for r in np.asarray(idx).tolist())
  assert np.all((np.asarray(idx) >= 0) & (np.asarray(idx) < w * v))


@_examples(6)
@given(data=st.data())
def test_router_topk_property(data):
  """Triton (its launcher's plan) and radix against the reference: the same experts,
  ties to the lowest (bf16 logits), gates to rounding; k up to E; Inf logits."""
  t, e = data.draw(st.integers(1, 40), label="t"), data.draw(st.integers(1, 64), label="e")
  k = data.draw(st.integers(1, min(e, topk.ROUTER_MAX_K)), label="k")
  score = data.draw(st.sampled_from(topk.ROUTER_SCORES))
  logits = jnp.asarray(_array(data, (t, e), specials=(np.inf, -np.inf, 0.0)), jnp.bfloat16)
  bias = (jnp.asarray(np.round(_array(data, (e,), specials=()) * 8) / 64)
          if data.draw(st.booleans(), label="bias") else None)
  want = topk.router_topk(logits, bias, k, score, scaling=2.5, impl="reference")
  for impl in ("triton", "radix"):
    ids, gates = topk.router_topk(logits, bias, k, score, scaling=2.5, impl=impl)
    np.testing.assert_array_equal(ids, want[0], err_msg=impl)
    np.testing.assert_allclose(gates, want[1], rtol=2e-6, atol=1e-7, err_msg=impl)
