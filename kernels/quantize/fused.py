"""RMSNorm fused with per-token FP8 quantization (the input of every quantized Linear).

Written so that XLA reads x as few times as it can: the RMS and the amax of the output are
sibling row reductions over the same input (amax(|x * g| * inv) = inv * amax(|x * g|),
inv > 0 per row), then one elementwise pass writes the FP8 values.
"""

import jax
import jax.numpy as jnp

from onerec_kernels.quantize.reference import FP8_DTYPE, FP8_MAX, scale_from_amax


def rmsnorm_quantize_rows(x: jax.Array, gamma: jax.Array, *, eps: float = 1e-6
                          ) -> tuple[jax.Array, jax.Array]:
  """quantize_rows(rmsnorm(x, gamma)) in FP32 without the 16-bit intermediate.

  x: [..., K], gamma: [K] -> (value [..., K] fp8, scale [...] f32). Equal to the
  reference composition up to the rounding of that intermediate.
  """
  x32 = x.astype(jnp.float32)
  xg = x32 * gamma.astype(jnp.float32)
  inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1) + eps)  # [...]
  scale = scale_from_amax(jnp.max(jnp.abs(xg), axis=-1) * inv)  # [...]
  value = jnp.clip(xg * (inv / scale)[..., None], -FP8_MAX, FP8_MAX).astype(FP8_DTYPE)
  return value, scale
