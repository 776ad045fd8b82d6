"""Correctness checks shared by the kernel tests and benchmarks: derived error bounds of
the FP8 kernels against their references, and a poisoned-output call."""

import jax
import jax.numpy as jnp

from onerec_kernels.fp8_linear.reference import fp8_linear_reference
from onerec_kernels.gemm_mgpu.core import Config
from onerec_kernels.grouped_gemm.reference import fp8_grouped_gemm_reference

# The FP8 tensor-core accumulator keeps about 14 mantissa bits (DeepSeek-V3 report) and
# aligns a step's addends to the largest: allow 2^-11 of the magnitude sum per wgmma
# k-step of 32 products (measured on an H100: up to half of that).
STEP_ERR = 2.0 ** -11


# Dense rowcol linear kernels in interpret mode (FP8, INT8): (M, N, K, config) at
# awkward shapes and tilings.
SMALL = Config(tile_m=64, tile_n=32, tile_k=128, max_concurrent_steps=2, epi_tile_n=32)
_SMALL_M = dict(tile_m=64, tile_n=32, wg_dimension="n", max_concurrent_steps=2,
                epi_tile_n=32)
LINEAR_INTERPRET_CASES = [
    (40, 72, 200, SMALL),  # nothing a multiple of the tile
    (130, 64, 256, SMALL),  # M over one CTA tile, K of two steps
    (24, 96, 128, Config(**_SMALL_M)),  # small M
    (150, 96, 256, Config(**_SMALL_M)),  # side-by-side warpgroups over three row tiles
    (24, 72, 384, Config(**_SMALL_M, k_splits=3)),  # small M, K split in three
]


def _abs8(q):
  return jnp.abs(q.astype(jnp.float32)).astype(q.dtype)


def fp8_linear_error_bound(x_q, x_scale, w_q, w_scale) -> jax.Array:
  """[M, N] bound on |kernel - fp8_linear_reference| (FP32 output): both sum the same
  exact FP8 products; the kernel accumulates K / 32 wgmma steps in the tensor cores."""
  mag = fp8_linear_reference(_abs8(x_q), x_scale, _abs8(w_q), w_scale,
                             out_dtype=jnp.float32)
  return (x_q.shape[1] / 32 + 1) * STEP_ERR * mag


def fp8_linear_rel_tol(k: int) -> float:
  """Relative Frobenius tolerance: per-step rounding (2^-13, margin 4x: a row whose few
  large values dominate its sum measured 2x) adds up like a random walk over K / 32
  steps."""
  return (k / 32) ** 0.5 * 2.0 ** -11


def fp8_grouped_error_bound(x_q, x_scale, w_q, w_scale, group_sizes) -> jax.Array:
  """[M, N] bound on |kernel - fp8_grouped_gemm_reference| (FP32 output): each 128-wide
  K block is accumulated fresh over 4 wgmma steps, then promoted in FP32."""
  mag = fp8_grouped_gemm_reference(_abs8(x_q), x_scale, _abs8(w_q), w_scale,
                                   group_sizes, out_dtype=jnp.float32)
  return (5 * STEP_ERR + x_scale.shape[1] * 2.0 ** -23) * mag


FP8_GROUPED_REL_TOL = 2 * 2.0 ** -11  # fp8_linear_rel_tol of one 128-wide block


def poisoned_call(f, out_shape, dtype):
  """Fills a buffer of the output's size with NaN and frees it just before f runs, so the
  allocator hands f that memory: an element f leaves unwritten reads as NaN."""
  poison = jnp.full(out_shape, jnp.nan, dtype)
  poison.block_until_ready()
  del poison
  return jax.block_until_ready(f())


def assert_within(out, ref, bound, rel_tol):
  """No NaN or inf; every element within its bound; relative Frobenius error below
  rel_tol. Returns (max err / bound, relative error)."""
  out, ref = out.astype(jnp.float32), ref.astype(jnp.float32)
  assert bool(jnp.all(jnp.isfinite(out))), "NaN or inf in the output (unwritten element?)"
  ratio = float(jnp.max(jnp.abs(out - ref) / (bound + 1e-30)))
  rel = float(jnp.linalg.norm(out - ref) / jnp.maximum(jnp.linalg.norm(ref), 1e-30))
  assert ratio <= 1.0 and rel < rel_tol, (ratio, rel, rel_tol)
  return ratio, rel
