"""RMSNorm fused with per-token FP8 quantization (the input of every quantized Linear).

Written so that XLA reads x twice instead of three times: the sum of squares and the amax
of the output are one variadic row reduction (amax(|x * g| * inv) = inv * amax(|x * g|),
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
  sumsq, amax = jax.lax.reduce(
      (x32 * x32, jnp.abs(xg)), (jnp.float32(0), jnp.float32(0)),
      lambda a, b: (a[0] + b[0], jnp.maximum(a[1], b[1])), (x.ndim - 1,))  # [...] each
  inv = jax.lax.rsqrt(sumsq / x.shape[-1] + eps)
  scale = scale_from_amax(amax * inv)
  value = jnp.clip(xg * (inv / scale)[..., None], -FP8_MAX, FP8_MAX).astype(FP8_DTYPE)
  return value, scale
