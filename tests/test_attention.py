"""The attention op: the reference against a float64 loop written from the definition,
and the Triton kernel against the reference in Triton's CPU interpreter at awkward shapes
(one query row, rows and keys off the blocks, GQA, padded and all-masked contexts); on
the GPU (marked) at the beam search's shapes through JAX."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import onerec_kernels.attention as attention_op
from onerec_kernels import backend
from onerec_kernels.attention import attention_reference

rng = np.random.default_rng(0)
FLOAT32_MIN = -3.4028234663852886e38  # the masked score: the most negative finite FP32


def _inputs(b, q, g, r, n, d, dtype=np.float32, padded=True):
  qs = rng.standard_normal((b, q, g, r, d)).astype(dtype)
  ks = rng.standard_normal((b, n, g, d)).astype(dtype)
  vs = rng.standard_normal((b, n, g, d)).astype(dtype)
  mask = rng.random((b, n)) > (0.3 if padded else -1)
  mask[:, 0] = True
  return qs, ks, vs, mask


def _attention_np(q, k, v, key_mask, causal=False, with_lse=False):
  """The definition, one (request, K/V head, query head) at a time in float64: -> out
  (and the log-sum-exp of every row's scores)."""
  b, nq, g, r, d = q.shape
  n = k.shape[1]
  out = np.zeros(q.shape, np.float64)
  lse = np.zeros(q.shape[:-1], np.float64)
  sees = np.arange(n)[None, :] <= np.arange(nq)[:, None] + n - nq if causal else True
  for bi in range(b):
    for gi in range(g):
      keys, values = k[bi, :, gi].astype(np.float64), v[bi, :, gi].astype(np.float64)
      for ri in range(r):
        s = q[bi, :, gi, ri].astype(np.float64) @ keys.T / np.sqrt(d)  # [Q, N]
        s = np.where(key_mask[bi][None, :], s, FLOAT32_MIN)
        s = np.where(sees, s, -np.inf)  # after a causal row's position: never seen
        top = s.max(axis=1, keepdims=True)
        p = np.exp(s - top)
        out[bi, :, gi, ri] = (p / p.sum(axis=1, keepdims=True)) @ values
        lse[bi, :, gi, ri] = top[:, 0] + np.log(p.sum(axis=1))
  return (out, lse) if with_lse else out


@pytest.mark.parametrize("shape", [(2, 5, 2, 3, 7, 16), (1, 1, 1, 1, 1, 8),
                                   (3, 4, 2, 2, 33, 32)])
def test_reference_against_float64(shape):
  q, k, v, mask = _inputs(*shape)
  got = attention_reference(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                            jnp.asarray(mask)[:, None, None, None, :])
  chex.assert_shape(got, q.shape)
  np.testing.assert_allclose(np.asarray(got, np.float64), _attention_np(q, k, v, mask),
                             rtol=2e-5, atol=2e-6)


def test_reference_all_masked_request_averages_every_key():
  q, k, v, mask = _inputs(2, 3, 1, 1, 6, 8)
  mask[1] = False
  got = attention_reference(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                            jnp.asarray(mask)[:, None, None, None, :])
  chex.assert_tree_all_finite(got)
  np.testing.assert_allclose(np.asarray(got)[1], np.broadcast_to(
      v[1].mean(axis=0)[None, :, None], (3, 1, 1, 8)), rtol=1e-5, atol=1e-6)


def _run_kernel(q, k, v, mask, causal=False, with_lse=False, config=None):
  """The Triton kernel in the interpreter on torch CPU tensors, with the launch plan the
  JAX wrapper uses (config: a tiling other than the default); outputs poisoned with NaN
  first."""
  import torch
  from onerec_kernels.attention import triton_gpu
  b, nq, g, r, d = q.shape
  grid, _, _, meta = triton_gpu.attention_plan(b, nq, g, r, k.shape[1], d, q.dtype, config)
  splits, rows = meta["SPLITS"], b * nq * g * r
  nan = lambda shape, dtype=torch.float32: torch.full(shape, float("nan"), dtype=dtype)
  if splits == 1:
    out, lse = nan(q.shape, torch.from_numpy(q).dtype), nan(q.shape[:-1] if with_lse else (1,))
    m_part = l_part = nan((1,))
  else:
    out, lse, m_part, l_part = nan((splits, rows, d)), nan((1,)), nan((splits, rows)), nan(
        (splits, rows))
  m = torch.zeros(1, dtype=torch.int8) if mask is None else torch.from_numpy(
      mask.astype(np.int8))
  triton_gpu._attention_kernel[grid](torch.from_numpy(q), torch.from_numpy(k),
                                     torch.from_numpy(v), m, out, lse, m_part, l_part,
                                     HAS_MASK=mask is not None, CAUSAL=causal,
                                     WRITE_LSE=with_lse, **meta)
  if splits > 1:  # the wrapper's merge
    o, row_lse = triton_gpu.merge_splits(*(jnp.asarray(t.numpy()) for t in
                                           (out, m_part, l_part)))
    out = torch.from_numpy(np.array(o).reshape(q.shape).astype(q.dtype))
    lse = torch.from_numpy(np.array(row_lse).reshape(q.shape[:-1]))
  return (out.float().numpy(), lse.numpy()) if with_lse else out.float().numpy()


@pytest.mark.parametrize("shape", [
    (2, 1, 3, 1, 20, 16),  # step 1: one query row a request
    (2, 37, 2, 2, 70, 32),  # GQA; rows and keys off the blocks
    (1, 130, 1, 1, 64, 40),  # two row blocks, a head width off the power of two
])
@pytest.mark.parametrize("padded", [True, False])
def test_triton_kernel_matches_reference_interpret(shape, padded):
  q, k, v, mask = _inputs(*shape, padded=padded)
  got = _run_kernel(q, k, v, mask if padded else None)
  want = _attention_np(q, k, v, mask)
  assert np.all(np.isfinite(got)), "an output element was left unwritten"
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_triton_kernel_all_masked_and_half_precision_interpret():
  q, k, v, mask = _inputs(3, 9, 1, 2, 50, 16)
  mask[2] = False  # a request whose context is all padding: the reference's average
  np.testing.assert_allclose(_run_kernel(q, k, v, mask), _attention_np(q, k, v, mask),
                             rtol=2e-5, atol=2e-5)
  h = [a.astype(np.float16) for a in (q, k, v)]
  got = _run_kernel(*h, mask)
  # fp16 operands (exact in FP32 products) and probabilities rounded to fp16 for the
  # second product: relative error of order 2^-11 per term, summed over the keys.
  np.testing.assert_allclose(got, _attention_np(*h, mask), rtol=5e-3, atol=5e-3)


def test_tilings():
  """The default tiling, and any other, launch the same computation: a 128-row, 32-key
  tiling (rows off its blocks) against the float64 definition."""
  from onerec_kernels.attention import triton_gpu
  assert triton_gpu.default_config(512, 128) == triton_gpu.Config(64, 64, 4, 3)
  assert triton_gpu.default_config(512, 128, jnp.float32).stages == 2
  assert triton_gpu.default_config(6, 256) == triton_gpu.Config(16, 32, 4, 3)
  q, k, v, mask = _inputs(2, 90, 2, 2, 100, 32)
  got = _run_kernel(q, k, v, mask, causal=True, config=triton_gpu.Config(128, 32, 8, 2))
  np.testing.assert_allclose(got, _attention_np(q, k, v, mask, causal=True), rtol=2e-5,
                             atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_key_splits_interpret(causal):
  """Keys split over programs and merged: the same result as one pass, with the
  log-sum-exp, for padded keys, an all-masked request (its splits' maxima equal) and,
  causal, splits a row sees no key of (rows past the diagonal of a later split)."""
  from onerec_kernels.attention import triton_gpu
  q, k, v, mask = _inputs(2, 40 if causal else 7, 2, 2, 300, 16)
  mask[1] = False
  cfg = triton_gpu.Config(16, 32, 4, 2, key_splits=4)
  _, _, _, meta = triton_gpu.attention_plan(2, q.shape[1], 2, 2, 300, 16, q.dtype, cfg)
  assert (meta["SPLITS"], meta["CHUNK"]) == (4, 96)  # 75 keys a split, rounded to blocks
  got, got_lse = _run_kernel(q, k, v, mask, causal=causal, with_lse=True, config=cfg)
  want, want_lse = _attention_np(q, k, v, mask, causal=causal, with_lse=True)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(got_lse[0], want_lse[0], rtol=1e-5, atol=1e-5)
  # the all-masked request: lse near the masked score, as the one-pass kernel's
  np.testing.assert_allclose(got_lse[1], want_lse[1], rtol=1e-6)


def test_default_config_splits_keys_for_few_programs(monkeypatch):
  from onerec_kernels.attention import triton_gpu
  monkeypatch.setattr(backend, "num_sms", lambda: 132)
  # Qwen3-1.7B decode at one request: 8 K/V heads x 8 row blocks = 64 programs of 132 SMs;
  # 4 splits reach 1.5 programs an SM (198), the fastest split count timed on an H200
  assert triton_gpu.default_config(512, 128, programs=8, n=5000).key_splits == 4
  # step 1's rows: 8 programs; 8 splits keep 8 of 64-key blocks a split (16 would not)
  assert triton_gpu.default_config(2, 128, programs=8, n=5000).key_splits == 8
  assert triton_gpu.default_config(512, 128, programs=64, n=1000).key_splits == 1  # full
  assert triton_gpu.default_config(2, 128, programs=8, n=600).key_splits == 1  # short
  assert triton_gpu.default_config(512, 128).key_splits == 1


def test_causal_all_masked_request_interpret():
  """A request whose keys are all masked averages, per causal row, the keys up to it (the
  reference's rule): the same whichever key blocks the kernel skips past the diagonal
  (300 rows: the first row block stops at key 128)."""
  q, k, v, mask = _inputs(2, 300, 1, 1, 300, 16)
  mask[1] = False
  want = _attention_np(q, k, v, mask, causal=True)
  np.testing.assert_allclose(want[1, :, 0, 0], np.cumsum(v[1, :, 0], 0)
                             / np.arange(1, 301)[:, None], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(_run_kernel(q, k, v, mask, causal=True), want,
                             rtol=2e-5, atol=2e-5)
  ref = attention_reference(*[jnp.asarray(a) for a in (q, k, v)],
                            jnp.asarray(mask)[:, None, None, None, :], causal=True)
  np.testing.assert_allclose(np.asarray(ref), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("shape", [(2, 33, 2, 2, 33, 16), (1, 70, 1, 1, 70, 32),
                                   (2, 9, 2, 1, 40, 16)])
def test_causal_and_lse_interpret(shape):
  """Causal prefill (Q = N, rows and keys off the blocks, padded keys) and the queries
  as the last Q of N positions, with each row's log-sum-exp."""
  q, k, v, mask = _inputs(*shape)
  got, got_lse = _run_kernel(q, k, v, mask, causal=True, with_lse=True)
  want, want_lse = _attention_np(q, k, v, mask, causal=True, with_lse=True)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(got_lse, want_lse, rtol=1e-5, atol=1e-5)
  ref, ref_lse = attention_reference(*[jnp.asarray(a) for a in (q, k, v)],
                                     jnp.asarray(mask)[:, None, None, None, :], causal=True,
                                     lse=True)
  np.testing.assert_allclose(np.asarray(ref), want, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(np.asarray(ref_lse), want_lse, rtol=1e-5, atol=1e-5)


def test_entry_point_takes_the_reference_off_the_gpu():
  q, k, v, mask = _inputs(2, 4, 2, 1, 24, 16)
  args = [jnp.asarray(a) for a in (q, k, v)]
  m = jnp.asarray(mask)[:, None, None, None, :]
  chex.assert_trees_all_equal(attention_op.attention(*args, m),
                              attention_reference(*args, m))
  if not backend.on_hopper():
    with pytest.raises(backend.Unsupported, match="runs on Hopper"):
      attention_op.attention(*args, m, impl="triton")
  with pytest.raises(ValueError, match=r"q \[B, Q, G, R, dh\]"):
    attention_op.attention(args[0][:, :, :1], args[1], args[2], m)


def test_key_mask_of():
  m = jnp.ones((2, 1, 1, 1, 9), bool)
  assert attention_op.key_mask_of(m, 2, 9).shape == (2, 9)
  assert attention_op.key_mask_of(jnp.ones((1, 1, 1, 1, 9), bool), 3, 9).shape == (3, 9)
  assert attention_op.key_mask_of(jnp.ones((1, 1, 1, 3, 9), bool), 2, 9) is None  # causal


@pytest.mark.gpu
def test_causal_prefill_with_lse_gpu():
  ks = jax.random.split(jax.random.key(7), 4)
  b, p, g, r, d = 2, 1000, 8, 2, 128  # a Qwen3-1.7B prompt
  q = jax.random.normal(ks[0], (b, p, g, r, d), jnp.bfloat16)
  k = jax.random.normal(ks[1], (b, p, g, d), jnp.bfloat16)
  v = jax.random.normal(ks[2], (b, p, g, d), jnp.bfloat16)
  m = (jnp.arange(p)[None] < jnp.array([[p], [613]]))[:, None, None, None, :]
  run = jax.jit(lambda *a: attention_op.attention(*a, m, causal=True, lse=True,
                                                  impl="triton"))
  got, got_lse = run(q, k, v)
  ref, ref_lse = attention_reference(q.astype(jnp.float32), k.astype(jnp.float32),
                                     v.astype(jnp.float32), m, causal=True, lse=True)
  assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - ref))) <= 2e-2
  assert float(jnp.max(jnp.abs(got_lse - ref_lse))) <= 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("b,q,g,r,n,d,dtype", [
    (32, 512, 11, 1, 512, 128, jnp.bfloat16),  # moe-4b wide steps
    (32, 1, 11, 1, 512, 128, jnp.bfloat16),  # moe-4b step 1
    (4, 300, 2, 2, 3000, 64, jnp.bfloat16),  # long online context, GQA
    (3, 16, 2, 2, 100, 32, jnp.float32),  # the demo's shapes, IEEE FP32
])
def test_triton_kernel_matches_reference_gpu(b, q, g, r, n, d, dtype):
  from onerec_kernels.gemm_mgpu import testing
  ks = jax.random.split(jax.random.key(n), 4)
  qs = jax.random.normal(ks[0], (b, q, g, r, d), dtype)
  k = jax.random.normal(ks[1], (b, n, g, d), dtype)
  v = jax.random.normal(ks[2], (b, n, g, d), dtype)
  mask = (jax.random.uniform(ks[3], (b, n)) > 0.3).at[:, 0].set(True).at[-1].set(False)
  m = mask[:, None, None, None, :]
  got = testing.poisoned_call(lambda: jax.jit(
      lambda *a: attention_op.attention(*a, impl="triton"))(qs, k, v, m), qs.shape, dtype)
  ref = attention_reference(qs.astype(jnp.float32), k.astype(jnp.float32),
                            v.astype(jnp.float32), m)
  chex.assert_tree_all_finite(got)
  err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - ref)))
  # bf16 output (2^-9 relative) and probabilities rounded to bf16 for the second product.
  assert err <= (2e-5 if dtype == jnp.float32 else 2e-2), err


def _prefix_masks(b, n):
  """[B, N] key masks: prompts of lengths n, n - 7 and 1 padded at the end (cuDNN's
  lengths), then one with a hole and one all masked (the fallback's)."""
  lengths = jnp.array([n, n - 7, 1])[:b]
  prefix = jnp.arange(n)[None] < lengths[:, None]
  return prefix, prefix.at[0, 3].set(False), prefix.at[-1].set(False)


def test_cudnn_mapping_with_xla_standing_in(monkeypatch):
  """The cuDNN implementation's reading of the op (GQA head order, the key mask as key
  counts, padded query rows, the run-time fallback) through jax's XLA implementation of
  the same call: equal to the reference for prefix masks, and the fallback (here the
  reference, the Triton kernel being refused) for a mask with a hole or an empty row."""
  real = jax.nn.dot_product_attention
  calls = []

  def xla(*args, implementation=None, **kw):
    calls.append(implementation)
    return real(*args, implementation="xla", **kw)

  monkeypatch.setattr(jax.nn, "dot_product_attention", xla)
  monkeypatch.setattr(backend, "on_hopper", lambda: True)

  def refuse(what):
    raise backend.Unsupported(what)

  monkeypatch.setattr(backend, "require_triton_gpu", refuse)
  b, n, g, r, d = 3, 40, 2, 3, 16
  ks = jax.random.split(jax.random.key(3), 3)
  q = jax.random.normal(ks[0], (b, n, g, r, d), jnp.bfloat16)
  k = jax.random.normal(ks[1], (b, n, g, d), jnp.bfloat16)
  v = jax.random.normal(ks[2], (b, n, g, d), jnp.bfloat16)
  # The causal prefill (Q = N), and non-causal attention of fewer queries than keys.
  for queries, causal in ((q, True), (q[:, :7], False)):
    for key_mask, fused in zip(_prefix_masks(b, n), (True, False, False)):
      m = key_mask[:, None, None, None, :]
      got = attention_op.attention(queries, k, v, m, causal=causal, impl="cudnn")
      ref = attention_reference(queries, k, v, m, causal=causal)
      if fused:  # XLA's softmax in f32 as well; both round the probabilities to bf16
        np.testing.assert_allclose(np.asarray(got, np.float32),
                                   np.asarray(ref, np.float32), rtol=2e-2, atol=2e-2)
      else:
        chex.assert_trees_all_equal(got, ref)
  assert calls == ["cudnn"] * 6  # traced into every call, chosen on the device
  with pytest.raises(backend.Unsupported, match="causal prefill"):
    attention_op.attention(q[:, :5], k, v, m, causal=True, impl="cudnn")
  with pytest.raises(backend.Unsupported, match="log-sum-exp"):
    attention_op.attention(q, k, v, m, lse=True, impl="cudnn")
  with pytest.raises(backend.Unsupported, match="bf16 or fp16"):
    attention_op.attention(*(a.astype(jnp.float32) for a in (q, k, v)), m, causal=True,
                           impl="cudnn")

  def no_cudnn(*args, **kw):
    raise RuntimeError("cuDNN is not detected.")

  monkeypatch.setattr(jax.nn, "dot_product_attention", no_cudnn)
  m = _prefix_masks(b, n)[0][:, None, None, None, :]
  with pytest.raises(backend.Unsupported, match="cuDNN is not detected"):
    attention_op.attention(q, k, v, m, causal=True, impl="cudnn")
  monkeypatch.setattr(attention_op, "MIN_CUDNN_KEYS", n)  # cuDNN first in the default order
  chex.assert_trees_all_equal(attention_op.attention(q, k, v, m, causal=True),  # falls back
                              attention_reference(q, k, v, m, causal=True))
  assert attention_op.IMPLEMENTATIONS.order(None)[0] == "cudnn"


def test_key_lengths_are_the_prefix_mask(monkeypatch):
  """key_lengths give the reference's result for the prefix mask they stand for (lengths
  past N, 0 and below: every key), in every implementation the CPU runs (the Triton one
  through the interpreter, the wrapper's own launch); bad key_lengths are refused."""
  q, k, v, _ = _inputs(4, 6, 2, 2, 21, 16)
  args = [jnp.asarray(a) for a in (q, k, v)]
  lengths = jnp.array([21, 5, 0, 30], jnp.int32)
  m = (np.arange(21)[None] < np.array([21, 5, 21, 21])[:, None])
  for causal in (False, True):
    queries = args[0] if not causal else jnp.asarray(_inputs(4, 21, 2, 2, 21, 16)[0])
    want = attention_reference(queries, *args[1:], jnp.asarray(m)[:, None, None, None, :],
                               causal=causal)
    got = attention_op.attention(queries, *args[1:], key_lengths=lengths, causal=causal,
                                 impl="reference")
    chex.assert_trees_all_equal(got, want)
  # The Triton implementation's key mask, run by the kernel in the interpreter.
  from onerec_kernels.attention import triton_gpu
  monkeypatch.setattr(backend, "require_triton_gpu", lambda what: None)
  monkeypatch.setattr(triton_gpu, "attention", lambda q, k, v, key_mask, causal, lse: (
      _run_kernel(*(np.asarray(a) for a in (q, k, v, key_mask)), causal, lse)))
  got = attention_op.attention(*args, key_lengths=lengths - 40 * (lengths == 0),
                               impl="triton")
  np.testing.assert_allclose(np.asarray(got), _attention_np(q, k, v, m), rtol=2e-5,
                             atol=2e-5)
  np.testing.assert_array_equal(attention_op.prefix_mask(jnp.array([0, 2, 5]), 3)[:, 0, 0, 0],
                                [[1, 1, 1], [1, 1, 0], [1, 1, 1]])
  with pytest.raises(ValueError, match="a mask or key_lengths, not both"):
    attention_op.attention(*args, jnp.asarray(m)[:, None, None, None, :], key_lengths=lengths)
  with pytest.raises(ValueError, match=r"key_lengths must be \[B\] = \[4\] integers"):
    attention_op.attention(*args, key_lengths=lengths[:3])
  with pytest.raises(ValueError, match="float32"):
    attention_op.attention(*args, key_lengths=lengths.astype(jnp.float32))


def test_cudnn_takes_key_lengths_with_no_run_time_check(monkeypatch):
  """Given key_lengths, the cuDNN implementation calls the fused attention directly (no
  lax.cond, which would stop the host until the device reached it), with the lengths as
  its key counts, a request of length 0 attending every key (through jax's XLA
  implementation of the same call)."""
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention",
                      lambda *a, implementation=None, **kw: real(*a, implementation="xla", **kw))
  monkeypatch.setattr(backend, "on_hopper", lambda: True)
  b, n, g, r, d = 3, 40, 2, 3, 16
  ks = jax.random.split(jax.random.key(5), 3)
  q = jax.random.normal(ks[0], (b, n, g, r, d), jnp.bfloat16)
  k = jax.random.normal(ks[1], (b, n, g, d), jnp.bfloat16)
  v = jax.random.normal(ks[2], (b, n, g, d), jnp.bfloat16)
  lengths = jnp.array([n, 9, 0], jnp.int32)
  mask = (jnp.arange(n)[None] < jnp.array([n, 9, n])[:, None])[:, None, None, None, :]
  for queries, causal in ((q, True), (q[:, :7], False)):
    run = lambda *a: attention_op.attention(*a, key_lengths=lengths, causal=causal,
                                            impl="cudnn")
    assert "cond" not in str(jax.make_jaxpr(run)(queries, k, v))
    got = run(queries, k, v)
    ref = attention_reference(queries, k, v, mask, causal=causal)
    # XLA's softmax in f32 as well; both round the probabilities to bf16
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32),
                               rtol=2e-2, atol=2e-2)


def test_cudnn_is_preferred_for_long_prompts_and_wide_steps():
  """The default order tries cuDNN for the causal prefill of MIN_CUDNN_KEYS keys and for
  non-causal attention of MIN_CUDNN_QUERIES queries a request to that many keys (a wide
  step's beams to a context), and leaves shorter ones to the Triton kernel."""
  prefer = attention_op.IMPLEMENTATIONS.prefer["cudnn"]
  keys = attention_op.MIN_CUDNN_KEYS
  assert (keys, attention_op.MIN_CUDNN_QUERIES) == (512, 128)
  q = lambda nq: jax.ShapeDtypeStruct((32, nq, 11, 1, 128), jnp.bfloat16)
  kv = lambda n: jax.ShapeDtypeStruct((32, n, 11, 128), jnp.bfloat16)
  assert prefer(q(keys), kv(keys), kv(keys), None, causal=True, lse=False)
  assert not prefer(q(keys - 1), kv(keys - 1), kv(keys - 1), None, causal=True, lse=False)
  assert prefer(q(128), kv(keys), kv(keys), None, causal=False, lse=False)
  assert not prefer(q(127), kv(keys), kv(keys), None, causal=False, lse=False)
  assert not prefer(q(512), kv(keys - 1), kv(keys - 1), None, causal=False, lse=False)


def test_cudnn_is_refused_off_the_gpu(monkeypatch):
  monkeypatch.setattr(backend, "on_hopper", lambda: False)  # any machine: as off the GPU
  q = jnp.zeros((1, 16, 1, 1, 16), jnp.bfloat16)
  k = jnp.zeros((1, 16, 1, 16), jnp.bfloat16)
  with pytest.raises(backend.Unsupported, match="cuDNN's attention is taken on Hopper"):
    attention_op.attention(q, k, k, causal=True, impl="cudnn")
  assert attention_op.IMPLEMENTATIONS.names == ("cudnn", "triton", "reference")


@pytest.mark.gpu
@pytest.mark.parametrize("nq, n, g, r, causal", [(1000, 1000, 8, 2, True),
                                                 (512, 512, 11, 1, False),
                                                 (300, 700, 4, 2, False)])
def test_cudnn_gpu(nq, n, g, r, causal):
  """cuDNN's fused attention at a Qwen3-1.7B prompt (causal), at moe-4b's wide-step
  cross-attention (512 beams to a 512-token context) and at an unaligned GQA shape, and
  the fallback for the masks it does not take, against the FP32 reference; the same with
  key_lengths, one of them 0."""
  b, d = 3, 128
  ks = jax.random.split(jax.random.key(11), 3)
  q = jax.random.normal(ks[0], (b, nq, g, r, d), jnp.bfloat16)
  k = jax.random.normal(ks[1], (b, n, g, d), jnp.bfloat16)
  v = jax.random.normal(ks[2], (b, n, g, d), jnp.bfloat16)
  f32 = lambda a: a.astype(jnp.float32)
  run = jax.jit(lambda *a: attention_op.attention(*a, causal=causal, impl="cudnn"))
  for key_mask in _prefix_masks(b, n):
    m = key_mask[:, None, None, None, :]
    got = run(q, k, v, m)
    ref = attention_reference(f32(q), f32(k), f32(v), m, causal=causal)
    chex.assert_tree_all_finite(got)
    err = float(jnp.max(jnp.abs(f32(got) - ref)))
    # bf16 output and bf16 probabilities, as the Triton kernel's
    assert err <= 2e-2, (err, jnp.sum(key_mask, 1))
  lengths = jnp.array([n, n - 7, 0], jnp.int32)  # the last one: every key
  got = jax.jit(lambda *a: attention_op.attention(*a, key_lengths=lengths, causal=causal,
                                                  impl="cudnn"))(q, k, v)
  ref = attention_reference(f32(q), f32(k), f32(v),
                            attention_op.prefix_mask(jnp.array([n, n - 7, n]), n), causal=causal)
  chex.assert_tree_all_finite(got)
  assert float(jnp.max(jnp.abs(f32(got) - ref))) <= 2e-2


_COMPILE_FOR_HOPPER = """
import sys
import jax.numpy as jnp
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from onerec_kernels.attention import triton_gpu as tg
for splits, causal, lse in [(1, False, True), (4, False, True), (2, True, False)]:
  grid, warps, stages, meta = tg.attention_plan(
      1, 256, 8, 2, 5000, 128, jnp.bfloat16, tg.Config(64, 64, 4, 3, key_splits=splits))
  meta.update(HAS_MASK=True, CAUSAL=causal, WRITE_LSE=lse)
  out = "*bf16" if meta["SPLITS"] == 1 else "*fp32"
  sig = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", mask_ptr="*i8", o_ptr=out,
             lse_ptr="*fp32", m_ptr="*fp32", l_ptr="*fp32", **{k: "constexpr" for k in meta})
  kernel = triton.compile(ASTSource(tg._attention_kernel, signature=sig, constexprs=meta),
                          target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps, num_stages=stages))
  assert kernel.asm["cubin"] and grid[2] == meta["SPLITS"] == splits, (splits, grid)
print("compiled")
"""


def test_kernel_compiles_for_hopper():
  """The kernel as the GPU launches it (one pass with the log-sum-exp, the keys split,
  causal and split) compiles to an sm_90 cubin, no GPU needed: Triton's compiler runs
  outside the interpreter the other CPU tests use, in a process of its own."""
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
  done = subprocess.run([sys.executable, "-c", _COMPILE_FOR_HOPPER], capture_output=True,
                        text=True, env=env)
  assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
