"""FP8 linear, the specification (docs/fp8.md).

y[m, n] = s_x[m] * s_w[n] * sum_k x_q[m, k] * w_q[n, k], FP32 accumulation, the weight
K-major [N, K] with one scale per output channel and the activation quantized per token at
run time.
"""

import jax
import jax.numpy as jnp


def fp8_linear_reference(x_q: jax.Array, x_scale: jax.Array, w_q: jax.Array,
                         w_scale: jax.Array, *, out_dtype=jnp.bfloat16) -> jax.Array:
  """x_q [M, K] fp8, x_scale [M] f32, w_q [N, K] fp8, w_scale [N] f32 -> [M, N]."""
  acc = jnp.einsum("mk,nk->mn", x_q.astype(jnp.float32), w_q.astype(jnp.float32),
                   preferred_element_type=jnp.float32,
                   precision=jax.lax.Precision.HIGHEST)
  return (acc * x_scale[:, None] * w_scale[None, :]).astype(out_dtype)

