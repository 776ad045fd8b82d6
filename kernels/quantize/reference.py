"""FP8 e4m3 quantization, the specification (docs/fp8.md).

scale = amax * fl32(1/448) over each quantization group (FP32; 1 where that product is
zero, NaN where amax is not finite); value = round_to_nearest_even(clip(x / scale, -448,
448)) as float8_e4m3fn, x / scale a correctly rounded FP32 division on every backend.
Rows (per token, per output channel) and 2-D blocks (1x128 activations, 128x128 weights)
share this one definition.
"""

import jax
import jax.numpy as jnp

FP8_DTYPE = jnp.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
BLOCK = 128  # block edge: 1 x BLOCK activation blocks, BLOCK x BLOCK weight blocks


def scale_from_amax(amax: jax.Array) -> jax.Array:
  """FP32 scale for a group whose largest magnitude is `amax`.

  amax * fl32(1/448), written out: XLA rewrites a division by a constant into this
  product anyway, and every backend must round the scale the same way to match bit for bit
  (it is within one ulp of amax / 448). Where the product is zero (an all-zero group, or
  one so small that it underflows) the scale is 1: the group quantizes to zeros. Where
  amax is not finite (a NaN or Inf in the group) the scale is NaN: the whole group
  quantizes to NaN, so a matmul row that reads it comes out NaN, as the unquantized
  product's would be non-finite, instead of its other values being rescaled silently.
  """
  amax = amax.astype(jnp.float32)
  scale = amax * jnp.float32(1.0 / FP8_MAX)
  scale = jnp.where(scale > 0, scale, jnp.float32(1.0))
  return jnp.where(jnp.isfinite(amax), scale, jnp.float32(jnp.nan))


def group_amax(magnitudes: jax.Array, axis) -> jax.Array:
  """Largest of magnitudes (|x|) over axis, NaN where any of them is NaN: XLA's CPU
  reduce-max drops NaNs for many shapes (a [345, 1325] row max, most two-axis block maxes
  measured), so the NaN is found by a reduction that cannot lose it."""
  return jnp.where(jnp.any(jnp.isnan(magnitudes), axis=axis), jnp.float32(jnp.nan),
                   jnp.max(magnitudes, axis=axis))


def cast_to_fp8(x: jax.Array, scale: jax.Array) -> jax.Array:
  """x / scale, clipped to +-448 and rounded to nearest even, as float8_e4m3fn.

  The division is correctly rounded on every backend: on the CPU, XLA's algebraic
  simplifier rewrites a division by a broadcast, A / broadcast(B), into A * broadcast(1 /
  B), which differs from the quotient in the last bit for about a quarter of the elements
  and moves the FP8 value at rounding ties. The optimization barrier hands the division
  a divisor of x's shape that the simplifier cannot see through.
  """
  x = x.astype(jnp.float32)
  divisor = jax.lax.optimization_barrier(jnp.broadcast_to(scale, x.shape))  # [..., M, K]
  return jnp.clip(x / divisor, -FP8_MAX, FP8_MAX).astype(FP8_DTYPE)


def quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-row quantization over the last axis.

  x: [..., M, K] -> (value [..., M, K] fp8, scale [..., M] f32). Per-token activations and
  per-output-channel weights ([N, K], K-major) are both this.
  """
  scale = scale_from_amax(group_amax(jnp.abs(x.astype(jnp.float32)), axis=-1))
  return cast_to_fp8(x, scale[..., None]), scale


def quantize_blocks(x: jax.Array, block_rows: int, block_cols: int = BLOCK
                    ) -> tuple[jax.Array, jax.Array]:
  """Block quantization of the last two axes in block_rows x block_cols tiles.

  x: [..., M, K] -> (value [..., M, K] fp8, scale [..., ceil(M/br), ceil(K/bc)] f32).
  Edge blocks that M or K does not fill are quantized over the elements they hold.
  """
  *lead, m, k = x.shape
  mb, kb = -(-m // block_rows), -(-k // block_cols)
  pad = [(0, 0)] * len(lead) + [(0, mb * block_rows - m), (0, kb * block_cols - k)]
  xp = jnp.pad(jnp.abs(x.astype(jnp.float32)), pad)
  amax = group_amax(xp.reshape(*lead, mb, block_rows, kb, block_cols), axis=(-3, -1))
  scale = scale_from_amax(amax)
  return cast_to_fp8(x, expand_block_scale(scale, m, k, block_rows, block_cols)), scale


def expand_block_scale(scale: jax.Array, m: int, k: int, block_rows: int,
                       block_cols: int) -> jax.Array:
  """[..., Mb, Kb] block scales -> [..., m, k] per-element scales."""
  full = jnp.repeat(jnp.repeat(scale, block_rows, axis=-2), block_cols, axis=-1)
  return full[..., :m, :k]


def dequantize_rows(value: jax.Array, scale: jax.Array) -> jax.Array:
  """Inverse of quantize_rows, in FP32."""
  return value.astype(jnp.float32) * scale[..., None]


def dequantize_blocks(value: jax.Array, scale: jax.Array, block_rows: int,
                      block_cols: int = BLOCK) -> jax.Array:
  """Inverse of quantize_blocks, in FP32."""
  m, k = value.shape[-2:]
  return value.astype(jnp.float32) * expand_block_scale(scale, m, k, block_rows, block_cols)
