"""INT8 W8A8 GEMMs, the specification (docs/frontier.md).

y[m, n] = s_x[m] * s_w[n] * sum_k x_q[m, k] * w_q[n, k]: int8 operands (symmetric, +-127,
onerec_kernels.quantize.formats.INT8), the products summed exactly in int32 (K * 127^2 <
2^31 for K < 133,000), then the two FP32 scales. Weights K-major, one scale per output
channel ([N], or [E, N] per expert); activations one scale per token.
"""

import jax
import jax.numpy as jnp

from onerec_kernels.grouped_gemm.reference import K_MAJOR_RAGGED, row_groups


def int8_linear_reference(x_q: jax.Array, x_scale: jax.Array, w_q: jax.Array,
                          w_scale: jax.Array, *, out_dtype=jnp.bfloat16) -> jax.Array:
  """x_q [M, K] int8, x_scale [M] f32, w_q [N, K] int8, w_scale [N] f32 -> [M, N]."""
  acc = jnp.einsum("mk,nk->mn", x_q, w_q, preferred_element_type=jnp.int32)
  return (acc.astype(jnp.float32) * x_scale[:, None] * w_scale[None, :]).astype(out_dtype)


def int8_grouped_gemm_reference(x_q: jax.Array, x_scale: jax.Array, w_q: jax.Array,
                                w_scale: jax.Array, group_sizes: jax.Array, *,
                                out_dtype=jnp.bfloat16) -> jax.Array:
  """x_q [M, K] int8 sorted by group, x_scale [M], w_q [E, N, K] int8, w_scale [E, N],
  group_sizes [E] -> [M, N]; rows past sum(group_sizes) come out zero."""
  acc = jax.lax.ragged_dot_general(x_q, w_q, group_sizes.astype(jnp.int32), K_MAJOR_RAGGED,
                                   preferred_element_type=jnp.int32)  # [M, N]
  group_of_row = row_groups(group_sizes, x_q.shape[0])  # [M]; E for padding rows
  w_rows = jnp.concatenate([w_scale, jnp.zeros_like(w_scale[:1])])[group_of_row]  # [M, N]
  return (acc.astype(jnp.float32) * x_scale[:, None] * w_rows).astype(out_dtype)
