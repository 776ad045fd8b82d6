"""INT8 W8A8 GEMMs: the references against an independent int64 computation (torch), the
Pallas kernels (the shared GEMM core with int8 wgmma) against the references in Mosaic GPU
interpret mode at awkward shapes, the entry points. The int32 accumulation is exact (a
split K's too) and the two FP32 scale multiplications run in the same order, so kernel
and reference agree bit for bit."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from onerec_kernels import backend
from onerec_kernels.fp8_linear.pallas import default_config as fp8_linear_config
from onerec_kernels.gemm_mgpu import core, testing
from onerec_kernels.int8_gemm import (GROUPED_IMPLEMENTATIONS, IMPLEMENTATIONS, PER_CHANNEL,
                                      PER_TOKEN, int8_grouped_gemm,
                                      int8_grouped_gemm_pallas, int8_grouped_gemm_reference,
                                      int8_linear, int8_linear_pallas,
                                      int8_linear_reference)
from onerec_kernels.int8_gemm.pallas import default_linear_config
from onerec_kernels.quantize import SwiGLUOf

SMALL = core.Config(tile_m=64, tile_n=32, tile_k=128, max_concurrent_steps=2,
                    epi_tile_n=64)  # 64 FP32 columns: 256-byte rows (ragged stores)


def _operands(key, m, n, k, e=None):
  """int8 x [M, K] per token (a zero row, values far beyond the rest in row 0) and w per
  channel ([N, K] or [E, N, K])."""
  kx, kw = jax.random.split(key)
  x = jax.random.normal(kx, (m, k), jnp.float32) * 3.0
  x = x.at[m // 2].set(0.0).at[0, :3].set(jnp.array([900.0, -2000.0, 1e4]))
  w = jax.random.normal(kw, (n, k) if e is None else (e, n, k), jnp.float32) * 0.05
  return (*PER_TOKEN.quantize(x), *PER_CHANNEL.quantize(w))


def _torch_int64(x_q, x_scale, w_q, w_scale, rows_of_group=None):
  """float64 s_x s_w (x_q . w_q) with the dot in int64 (torch), per row's group."""
  xq = torch.from_numpy(np.asarray(x_q).astype(np.int64))
  wq = np.asarray(w_q).astype(np.int64)
  ws = np.asarray(w_scale, np.float64)
  if rows_of_group is None:
    acc = (xq @ torch.from_numpy(wq).T).numpy()
    return acc * np.asarray(x_scale, np.float64)[:, None] * ws[None, :]
  out = np.zeros((x_q.shape[0], wq.shape[1]))
  for g, rows in enumerate(rows_of_group):
    acc = (xq[rows] @ torch.from_numpy(wq[g]).T).numpy()
    out[rows] = acc * np.asarray(x_scale, np.float64)[rows, None] * ws[g][None, :]
  return out


def _groups(sizes):
  ends = np.cumsum(sizes)
  return [slice(e - s, e) for s, e in zip(sizes, ends)]


def test_references_against_int64():
  ops = _operands(jax.random.key(0), 33, 48, 200)
  y = np.asarray(int8_linear_reference(*ops, out_dtype=jnp.float32), np.float64)
  want = _torch_int64(*ops)
  np.testing.assert_allclose(y, want, rtol=2 * 2.0**-24, atol=1e-30)  # two FP32 roundings
  sizes = np.array([13, 0, 20])
  gops = _operands(jax.random.key(1), 40, 150, 200, e=3)
  y = np.asarray(int8_grouped_gemm_reference(*gops, jnp.asarray(sizes, jnp.int32),
                                             out_dtype=jnp.float32), np.float64)
  want = _torch_int64(*gops, _groups(sizes))
  np.testing.assert_allclose(y[:33], want[:33], rtol=2 * 2.0**-24, atol=1e-30)
  assert np.all(y[33:] == 0)  # padding rows


@pytest.mark.parametrize("m,n,k,cfg", testing.LINEAR_INTERPRET_CASES)
def test_linear_kernel_matches_reference_interpret(m, n, k, cfg):
  ops = _operands(jax.random.key(m + n + k), m, n, k)
  with backend.interpret():
    out = int8_linear_pallas(*ops, out_dtype=jnp.float32, config=cfg)
  ref = int8_linear_reference(*ops, out_dtype=jnp.float32)
  chex.assert_trees_all_equal(out, ref)  # split K too: int32 sums of exact partials
  assert bool(jnp.all(out[m // 2] == 0))


def test_split_k_stays_exact():
  """A split's int32 sum must fit FP32 exactly (K * 128^2 <= 2^24): the default tiling
  cuts K finer than the FP8 linear's where that split is longer, and the core refuses
  a longer one."""
  fp8_cfg = fp8_linear_config(32, 4224, 12288)
  assert 12288 // fp8_cfg.k_splits > core.INT8_SPLIT_K == 1024  # the FP8 tiling's split
  cfg = default_linear_config(32, 4224, 12288)
  assert 12288 // cfg.k_splits <= 1024 and cfg.k_splits > fp8_cfg.k_splits
  assert (12288 // cfg.tile_k) % cfg.k_splits == 0
  assert default_linear_config(16384, 1408, 5632) == fp8_linear_config(16384, 1408, 5632)
  a = jnp.zeros((128, 4096), jnp.int8)
  s = jnp.ones((128,), jnp.float32)
  with pytest.raises(ValueError, match="an int8 split of K = 2048"):
    core.gemm(a, a[None], s, s[None], out_dtype=jnp.float32,
              cfg=dataclasses.replace(SMALL, k_splits=2), scaling="rowcol")


def test_grouped_kernel_matches_reference_interpret():
  """Groups of awkward sizes, an empty one, rows past the groups (zero), bf16 output."""
  ops = _operands(jax.random.key(3), 90, 72, 200, e=3)
  sizes = jnp.array([30, 0, 41], jnp.int32)
  with backend.interpret():
    out = int8_grouped_gemm_pallas(*ops, sizes, out_dtype=jnp.float32, config=SMALL)
    out16 = int8_grouped_gemm_pallas(*ops, sizes, config=core.Config(
        tile_m=64, tile_n=64, tile_k=128, max_concurrent_steps=2, epi_tile_n=64))
  ref = int8_grouped_gemm_reference(*ops, sizes, out_dtype=jnp.float32)
  chex.assert_trees_all_equal(out, ref)
  assert bool(jnp.all(out[71:] == 0))
  chex.assert_trees_all_equal(out16, ref.astype(jnp.bfloat16))


def test_entry_points_quantize_the_producer_and_fall_back_off_gpu():
  x = jax.random.normal(jax.random.key(4), (2, 5, 192), jnp.float32)
  src = SwiGLUOf(jnp.concatenate([x, 2 * x], -1))
  w_q, w_s = PER_CHANNEL.quantize(jax.random.normal(jax.random.key(5), (48, 192)) * 0.1)
  y = int8_linear(src, w_q, w_s)
  x_q, x_s = PER_TOKEN.quantize(jax.nn.silu(x) * 2 * x)
  ref = int8_linear_reference(x_q.reshape(10, 192), x_s.reshape(10), w_q, w_s,
                              out_dtype=jnp.float32).reshape(2, 5, 48)
  np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)  # FP32 SwiGLU vs jnp's
  e_q, e_s = PER_CHANNEL.quantize(jax.random.normal(jax.random.key(6), (2, 48, 192)))
  sizes = jnp.array([4, 6], jnp.int32)
  flat = x.reshape(10, 192)
  chex.assert_trees_all_equal(
      int8_grouped_gemm(flat, e_q, e_s, sizes),
      int8_grouped_gemm_reference(*PER_TOKEN.quantize(flat), e_q, e_s, sizes,
                                  out_dtype=jnp.float32))
  assert IMPLEMENTATIONS.names == GROUPED_IMPLEMENTATIONS.names == ("mosaic", "reference")
  if not backend.on_hopper():
    with pytest.raises(backend.Unsupported, match="Mosaic GPU INT8 linear runs on Hopper"):
      int8_linear(flat, w_q, w_s, impl="mosaic")


def test_linear_entry_point_quantizes_the_tiles_rows_interpret(monkeypatch):
  """Where the Mosaic GEMM runs, the int8 quantization pads the 10 rows to the 64-row
  tile itself; the result is exactly the reference's on the 10 rows."""
  import onerec_kernels.int8_gemm as int8_op
  x = jax.random.normal(jax.random.key(7), (2, 5, 256), jnp.float32)
  w_q, w_s = PER_CHANNEL.quantize(jax.random.normal(jax.random.key(8), (64, 256)) * 0.1)
  calls = []
  quantize = int8_op.quantize_activations_int8
  monkeypatch.setattr(int8_op, "quantize_activations_int8",
                      lambda a, **kw: calls.append(kw) or quantize(a, **kw))
  with backend.interpret():
    y = int8_linear(x, w_q, w_s, out_dtype=jnp.float32)
  assert calls == [{"pad_rows": 64}]
  x_q, x_s = PER_TOKEN.quantize(x.reshape(10, 256))
  chex.assert_trees_all_equal(
      y, int8_linear_reference(x_q, x_s, w_q, w_s, out_dtype=jnp.float32).reshape(2, 5, 64))
  with pytest.raises(ValueError, match="pad_rows=9 is fewer than the activation's 10 rows"):
    quantize(x, pad_rows=9)


def test_core_refuses_int8_without_rowcol_scaling():
  a = jnp.zeros((128, 128), jnp.int8)
  with pytest.raises(ValueError, match="int8 operands need rowcol scaling"):
    core.gemm(a, a[None], out_dtype=jnp.float32, cfg=SMALL)


@pytest.mark.parametrize("m", [16384, 256, 32])
def test_default_configs_lower_for_hopper(m):
  """The default tilings compile to Mosaic GPU (int8 wgmma, int32 accumulators) at the
  moe-4b shapes (256 rows: the linear's side-by-side tiling for few row tiles): shared
  memory within the H100's, layouts inferred; lowering needs no GPU."""
  s, i8, f32 = jax.ShapeDtypeStruct, jnp.int8, jnp.float32
  for k, n in [(1408, 11264), (5632, 1408)]:
    args = (s((m, k), i8), s((m,), f32), s((n, k), i8), s((n,), f32))
    jax.jit(int8_linear_pallas).trace(*args).lower(lowering_platforms=("cuda",))
  rows, e, k, n = 3 * m, 53, 1408, 2816
  args = (s((rows, k), i8), s((rows,), f32), s((e, n, k), i8), s((e, n), f32),
          s((e,), jnp.int32))
  jax.jit(int8_grouped_gemm_pallas).trace(*args).lower(lowering_platforms=("cuda",))


# moe-4b shapes (M, K, N): the linear at 16384 and 32 tokens, the experts' gate_up and
# down at 49152 routed rows (16384 tokens, top-3) and at 96 (32 tokens).
GPU_LINEAR = [(16384, 1408, 11264), (16384, 5632, 1408), (32, 1408, 4224), (32, 5632, 1408)]
GPU_GROUPED = [(49152, 1408, 2816), (49152, 1408, 1408), (96, 1408, 2816)]


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", GPU_LINEAR)
def test_linear_kernel_benchmark_shapes_gpu(m, k, n):
  ops = _operands(jax.random.key(m + k + n), m, n, k)
  out = testing.poisoned_call(lambda: jax.jit(lambda *a: int8_linear_pallas(
      *a, out_dtype=jnp.float32))(*ops), (m, n), jnp.float32)
  ref = int8_linear_reference(*ops, out_dtype=jnp.float32)
  np.testing.assert_allclose(out, ref, rtol=4 * 2.0**-24, atol=1e-30)


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n", GPU_GROUPED)
def test_grouped_kernel_benchmark_shapes_gpu(m, k, n):
  e = 53
  ops = _operands(jax.random.key(m + k + n), m, n, k, e=e)
  sizes = np.random.default_rng(0).multinomial(m - 5, np.full(e, 1 / e)).astype(np.int32)
  sizes = jnp.asarray(sizes)
  out = testing.poisoned_call(lambda: jax.jit(lambda *a: int8_grouped_gemm_pallas(
      *a, out_dtype=jnp.float32))(*ops, sizes), (m, n), jnp.float32)
  ref = int8_grouped_gemm_reference(*ops, sizes, out_dtype=jnp.float32)
  np.testing.assert_allclose(out, ref, rtol=4 * 2.0**-24, atol=1e-30)
