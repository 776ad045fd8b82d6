"""Grouped GEMM kernels (bf16, and FP8 with 1x128 / 128x128 block scales) against the
references. On the CPU in Mosaic GPU interpret mode at small shapes with small tiles;
GPU tests (marked) run the benchmark shapes."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental.pallas import mosaic_gpu as plgpu

from onerec_kernels import backend
from onerec_kernels.gemm_mgpu import core, testing
from onerec_kernels.grouped_gemm import routing
from onerec_kernels.grouped_gemm import (
    combine,
    fp8_grouped_gemm,
    fp8_grouped_gemm_pallas,
    fp8_grouped_gemm_reference,
    grouped_gemm,
    grouped_gemm_pallas,
    grouped_gemm_reference,
    sort_by_expert,
)
from onerec_kernels.quantize import quantize_blocks

FP8_SMALL = core.Config(tile_m=64, tile_n=64, tile_k=128, max_concurrent_steps=2)
FP8_THREE = core.Config(tile_m=64, tile_n=64, tile_k=128, max_concurrent_steps=2,
                        compute_wgs=3)  # the shape of the FP8 default's 192-row CTA
BF16_SMALL = core.Config(tile_m=64, tile_n=32, tile_k=64, max_concurrent_steps=2,
                         wg_dimension="n")
BF16_TALL = core.Config(tile_m=128, tile_n=32, tile_k=64, max_concurrent_steps=2,
                        wg_dimension="n")  # the shape of the 16-bit default's 128x256 CTA


def _fp8_operands(key, m, n, k, e):
  kx, kw = jax.random.split(key)
  x = jax.random.normal(kx, (m, k), jnp.float32) * 3.0
  x = x.at[m // 3].set(0.0).at[0, :3].set(jnp.array([1000.0, -5e3, 449.0]))
  w = jax.random.normal(kw, (e, n, k), jnp.float32) * 0.05
  return (*quantize_blocks(x, 1, 128), *quantize_blocks(w, 128, 128))


def _check_fp8(m, n, k, group_sizes, seed=0, cfg=FP8_SMALL):
  gs = jnp.asarray(group_sizes, jnp.int32)
  ops = _fp8_operands(jax.random.key(seed), m, n, k, gs.shape[0])
  with plgpu.force_gpu_interpret_mode():
    out = fp8_grouped_gemm_pallas(*ops, gs, out_dtype=jnp.float32, config=cfg)
  ref = fp8_grouped_gemm_reference(*ops, gs, out_dtype=jnp.float32)
  testing.assert_within(out, ref, testing.fp8_grouped_error_bound(*ops, gs),
                        testing.FP8_GROUPED_REL_TOL)
  total = int(gs.sum())
  assert bool(jnp.all(out[total:] == 0))  # rows past the groups come out zero


@pytest.mark.parametrize("m,n,k,group_sizes", [
    (200, 128, 256, [70, 0, 100, 30]),  # a zero group, K of two blocks
    (150, 64, 128, [0, 150, 0]),  # one expert takes all rows, K of one block
    (90, 72, 200, [10, 20, 5, 0, 40]),  # N, K not multiples; rows past the groups
    (168, 64, 256, [24, 0, 64, 72]),  # 8-row aligned groups, whole-tile stores
])
def test_fp8_pallas_matches_reference_interpret(m, n, k, group_sizes):
  _check_fp8(m, n, k, group_sizes)


@pytest.mark.parametrize("m,n,k,group_sizes", [
    (300, 128, 256, [70, 0, 130, 60]),  # 192-row CTAs: groups inside and across them
    (200, 64, 128, [200]),  # one expert, a partial second CTA
])
def test_fp8_pallas_three_warpgroups_interpret(m, n, k, group_sizes):
  _check_fp8(m, n, k, group_sizes, cfg=FP8_THREE)


@pytest.mark.parametrize("k,stages", [(456, 3), (600, 2)])
def test_fp8_pallas_k_longer_than_the_pipeline_interpret(k, stages):
  """Four and five K blocks through two or three stages: stages reused within a tile, and
  the memory warpgroup observes the last releases before it exits."""
  cfg = dataclasses.replace(FP8_SMALL, max_concurrent_steps=stages)
  _check_fp8(90, 72, k, [10, 20, 5, 0, 40], cfg=cfg)


@pytest.mark.parametrize("cfg", [BF16_SMALL, BF16_TALL])
def test_bf16_pallas_matches_reference_interpret(cfg):
  gs = jnp.array([33, 0, 60, 7], jnp.int32)
  kx, kw = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (110, 128), jnp.bfloat16)
  w = jax.random.normal(kw, (4, 64, 128), jnp.bfloat16)
  with plgpu.force_gpu_interpret_mode():
    out = grouped_gemm_pallas(x, w, gs, out_dtype=jnp.float32, config=cfg)
  ref = grouped_gemm_reference(x, w, gs, out_dtype=jnp.float32)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_fp8_nan_block_reaches_only_its_row_interpret():
  """A NaN or Inf in a 1 x 128 activation block makes its scale NaN (the quantizer's rule)
  and its output row NaN; the other rows of its expert and of the others stay finite."""
  gs = jnp.array([40, 0, 30], jnp.int32)
  x = jax.random.normal(jax.random.key(8), (80, 256)).at[5, 200].set(jnp.nan)
  x = x.at[50, 3].set(-jnp.inf)
  w = jax.random.normal(jax.random.key(9), (3, 64, 256)) * 0.05
  ops = (*quantize_blocks(x, 1, 128), *quantize_blocks(w, 128, 128))
  with plgpu.force_gpu_interpret_mode():
    out = fp8_grouped_gemm_pallas(*ops, gs, out_dtype=jnp.float32, config=FP8_SMALL)
  ref = fp8_grouped_gemm_reference(*ops, gs, out_dtype=jnp.float32)
  for y in (np.asarray(out), np.asarray(ref)):
    assert np.all(np.isnan(y[[5, 50]])) and np.all(np.isfinite(np.delete(y, [5, 50], 0)))


@settings(max_examples=3, deadline=None)
@given(st.lists(st.integers(0, 70), min_size=1, max_size=5),
       st.integers(0, 20), st.sampled_from([128, 256]))
def test_fp8_pallas_property_interpret(sizes, extra_rows, k):
  _check_fp8(sum(sizes) + extra_rows or 1, 64, k, sizes, seed=len(sizes))


@pytest.mark.parametrize("m,n,k,e", [(49152, 2816, 1408, 53), (49152, 1408, 1408, 53),
                                     (96, 2816, 1408, 53), (32768, 4096, 7168, 8)])
def test_default_configs_lower_for_hopper(m, n, k, e):
  """The default tilings compile to Mosaic GPU at the benchmark shapes (shared memory
  within the H100's 227 KiB, layouts inferred); lowering needs no GPU."""
  s = jax.ShapeDtypeStruct
  fp8, f32 = jnp.float8_e4m3fn, jnp.float32
  fp8_args = (s((m, k), fp8), s((m, k // 128), f32), s((e, n, k), fp8),
              s((e, n // 128, k // 128), f32), s((e,), jnp.int32))
  bf16_args = (s((m, k), jnp.bfloat16), s((e, n, k), jnp.bfloat16), s((e,), jnp.int32))
  for fn, args in [(fp8_grouped_gemm_pallas, fp8_args), (grouped_gemm_pallas, bf16_args)]:
    jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))


def test_gemm_rejects_unsupported_tilings():
  gs = jnp.array([5, 3], jnp.int32)
  x, w = jnp.zeros((8, 128), jnp.bfloat16), jnp.zeros((2, 64, 128), jnp.bfloat16)
  narrow = core.Config(tile_m=64, tile_n=64, tile_k=64, epi_tile_n=16)
  with pytest.raises(ValueError, match="128-byte aligned rows"):
    grouped_gemm_pallas(x, w, gs, config=narrow)
  ops = _fp8_operands(jax.random.key(0), 8, 128, 128, 2)
  with pytest.raises(ValueError, match="tile_m == 64"):
    fp8_grouped_gemm_pallas(*ops, gs, config=core.Config(tile_m=128, tile_n=64))
  with pytest.raises(ValueError, match="compute_wgs=4: 2 or 3"):
    fp8_grouped_gemm_pallas(*ops, gs, config=core.Config(tile_m=64, tile_n=64,
                                                         compute_wgs=4))


@pytest.mark.parametrize("sizes,rows,tile", [
    ([70, 0, 100], 200, 128), ([0, 0, 5], 5, 64), ([300, 1, 1, 300], 640, 128),
    ([64, 64], 128, 64), ([3, 300, 5], 320, 128), ([13, 250], 263, 64),
])
def test_tile_schedule_covers_each_row_once(sizes, rows, tile):
  sched = np.asarray(core.tile_schedule(jnp.array(sizes, jnp.int32), rows, tile))
  owner = np.full(rows, -1)
  bounds = np.cumsum([0] + sizes + [rows - sum(sizes)])
  for start, grp, lo, hi in sched.T:
    assert start % core.ROW_ALIGN == 0 and 0 <= lo <= hi <= tile
    assert start + tile <= core.round_up(rows, tile)
    for r in range(start + lo, start + hi):
      assert owner[r] == -1 and bounds[grp] <= r < bounds[grp + 1]
      owner[r] = grp
  assert bool(np.all(owner >= 0))


def test_entry_points_off_gpu_are_reference():
  gs = jnp.array([3, 0, 5], jnp.int32)
  x = jax.random.normal(jax.random.key(2), (8, 256), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(3), (3, 128, 256), jnp.bfloat16)
  w_q, w_s = quantize_blocks(w, 128, 128)
  y, y8 = grouped_gemm(x, w, gs), fp8_grouped_gemm(x, w_q, w_s, gs)
  assert y.shape == y8.shape == (8, 128) and y8.dtype == jnp.bfloat16
  if not backend.on_hopper():
    assert bool(jnp.all(y == grouped_gemm_reference(x, w, gs)))


def _route(key, tokens, top_k, experts, zipf):
  logits = jnp.zeros((experts,))
  if zipf:
    logits = -1.2 * jnp.log(jnp.arange(1, experts + 1, dtype=jnp.float32))
  _, ids = jax.lax.top_k(logits + jax.random.gumbel(key, (tokens, experts)), top_k)
  return jnp.bincount(ids.reshape(-1), length=experts).astype(jnp.int32)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens,n,zipf", [(16384, 2816, False), (16384, 1408, True),
                                           (32, 2816, False)])
def test_fp8_benchmark_shapes_gpu(tokens, n, zipf):
  k, e = 1408, 53
  gs = _route(jax.random.key(tokens + n), tokens, 3, e, zipf)
  m = tokens * 3
  ops = _fp8_operands(jax.random.key(n), m, n, k, e)
  f = jax.jit(lambda *a: fp8_grouped_gemm_pallas(*a, out_dtype=jnp.float32))
  out = testing.poisoned_call(lambda: f(*ops, gs), (m, n), jnp.float32)
  ref = fp8_grouped_gemm_reference(*ops, gs, out_dtype=jnp.float32)
  testing.assert_within(out, ref, testing.fp8_grouped_error_bound(*ops, gs),
                        testing.FP8_GROUPED_REL_TOL)


@pytest.mark.gpu
def test_bf16_benchmark_shape_gpu():
  gs = _route(jax.random.key(0), 16384, 3, 53, False)
  kx, kw = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (49152, 1408), jnp.bfloat16)
  w = jax.random.normal(kw, (53, 2816, 1408), jnp.bfloat16)
  out = testing.poisoned_call(lambda: jax.jit(grouped_gemm_pallas)(x, w, gs),
                              (49152, 2816), jnp.bfloat16)
  ref = grouped_gemm_reference(x, w, gs, out_dtype=jnp.float32)
  testing.assert_within(out, ref, jnp.abs(ref) * 2.0 ** -7 + 0.1, 2.0 ** -8)


@pytest.mark.parametrize("counting", [True, False])
def test_sort_by_expert_and_combine_against_numpy(counting, monkeypatch):
  if not counting:  # the argsort kept for one-hot buffers past the limit
    monkeypatch.setattr(routing, "ONE_HOT_LIMIT", 0)
  rng = np.random.default_rng(3)
  t, k, e, n = 37, 3, 6, 20
  ids = np.stack([rng.choice(e - 1, k, replace=False) for _ in range(t)])  # expert 5 empty
  ids[4] = [2, 2, 2]  # repeated expert: the stable order keeps slot order
  order, gs = sort_by_expert(jnp.asarray(ids), e)
  np.testing.assert_array_equal(order, np.argsort(ids.reshape(-1), kind="stable"))
  np.testing.assert_array_equal(gs, np.bincount(ids.reshape(-1), minlength=e))
  bad = ids.copy()
  bad[0, 0], bad[9, 1] = -1, e  # in no group: sorted last, in position order
  order_bad, gs_bad = sort_by_expert(jnp.asarray(bad), e)
  np.testing.assert_array_equal(order_bad[-2:], [0, 9 * k + 1])
  np.testing.assert_array_equal(
      order_bad, np.argsort(np.where(bad < 0, e, bad).reshape(-1), kind="stable"))
  np.testing.assert_array_equal(gs_bad, np.bincount(bad.reshape(-1)[bad.reshape(-1) >= 0],
                                                    minlength=e + 1)[:e])
  y = rng.standard_normal((t * k, n)).astype(np.float32)
  gates = rng.uniform(size=(t, k)).astype(np.float32)
  want = np.zeros((t, n))
  for i, flat in enumerate(np.asarray(order)):  # sorted row i holds slot flat
    want[flat // k] += gates[flat // k, flat % k] * y[i].astype(np.float64)
  got = combine(jnp.asarray(y), order, jnp.asarray(gates))
  chex.assert_shape(got, (t, n))
  chex.assert_trees_all_close(got, want.astype(np.float32), rtol=1e-6, atol=1e-6)
