"""Grouped GEMM over experts, the specification (plain JAX, runs anywhere).

Rows of x are sorted by group: rows [offset_e, offset_e + group_sizes[e]) belong to
expert e. Weights are K-major, [E, N, K] (the PyTorch Linear layout). Rows past
sum(group_sizes) are padding and come out zero; in FP8, a padding row whose activation
holds a NaN or Inf comes out NaN (its scale is NaN, docs/fp8.md), in the kernels alike.
"""

import jax
import jax.numpy as jnp

from onerec_kernels.quantize.reference import BLOCK

# Contract x's K with w's K (its last axis); w's axis 0 indexes the groups.
K_MAJOR_RAGGED = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(((1,), (2,)), ((), ())),
    lhs_ragged_dimensions=[0],
    rhs_group_dimensions=[0],
)


def grouped_gemm_reference(x: jax.Array, w: jax.Array, group_sizes: jax.Array, *,
                           out_dtype=None) -> jax.Array:
  """y[m] = x[m] @ w[group(m)].T with FP32 accumulation.

  x: [M, K], w: [E, N, K], group_sizes: [E] int32 -> [M, N] in out_dtype (x's by default).
  """
  out_dtype = out_dtype or x.dtype
  y = jax.lax.ragged_dot_general(x, w.astype(x.dtype), group_sizes.astype(jnp.int32),
                                 K_MAJOR_RAGGED, preferred_element_type=jnp.float32)
  return y.astype(out_dtype)


def fp8_grouped_gemm_reference(x_q: jax.Array, x_scale: jax.Array, w_q: jax.Array,
                               w_scale: jax.Array, group_sizes: jax.Array, *,
                               block: int = BLOCK, out_dtype=jnp.bfloat16) -> jax.Array:
  """FP8 grouped GEMM with 1 x block activation and block x block weight scales.

  x_q: [M, K] fp8, x_scale: [M, Kb] f32, w_q: [E, N, K] fp8, w_scale: [E, Nb, Kb] f32.
  y[m, n] = sum_kb x_scale[m, kb] * w_scale[e, n // block, kb]
                   * sum_{k in kb} x_q[m, k] * w_q[e, n, k],   e = group(m),
  each K block's product accumulated in FP32, then scaled and added (docs/fp8.md).
  """
  m, k = x_q.shape
  e, n, _ = w_q.shape
  kb = -(-k // block)
  group_of_row = row_groups(group_sizes, m)  # [M]; E for padding rows
  w_scale_rows = jnp.concatenate([w_scale, jnp.zeros((1,) + w_scale.shape[1:],
                                                     w_scale.dtype)])[group_of_row]
  w_scale_rows = jnp.repeat(w_scale_rows, block, axis=1)[:, :n]  # [M, N, Kb]
  acc = jnp.zeros((m, n), jnp.float32)
  for b in range(kb):
    cols = slice(b * block, min((b + 1) * block, k))
    part = grouped_gemm_reference(x_q[:, cols].astype(jnp.float32),
                                  w_q[:, :, cols].astype(jnp.float32), group_sizes,
                                  out_dtype=jnp.float32)
    acc = acc + part * x_scale[:, b, None] * w_scale_rows[:, :, b]
  return acc.astype(out_dtype)


def row_groups(group_sizes: jax.Array, num_rows: int) -> jax.Array:
  """Group index of each of num_rows sorted rows; len(group_sizes) for padding rows."""
  ends = jnp.cumsum(group_sizes.astype(jnp.int32))
  return jnp.searchsorted(ends, jnp.arange(num_rows, dtype=jnp.int32), side="right")
