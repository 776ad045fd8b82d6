"""FP8 linear on Hopper: the shared Mosaic GPU GEMM core with per-token x per-channel
scales applied to the FP32 accumulator in the epilogue."""

import jax
import jax.numpy as jnp

from onerec_kernels import backend
from onerec_kernels.gemm_mgpu import core


def default_config(m: int, n: int, k: int) -> core.Config:
  """Heuristic tiling per shape.

  Small M (decode step 1 has 32 tokens): a 64-row tile with the two warpgroups side by
  side along N, so that more SMs stream the weight: 32-wide columns where 64-wide ones
  would leave half the SMs idle. A long K (at least 4 K blocks a split) is split too,
  with 64-wide columns: the smallest split that fills three quarters of the SMs.
  Up to 2048 rows, 64x128 warpgroup tiles stacked along M (a 128x128 CTA), or, where
  those CTAs would not fill half the SMs (a decode step of a few requests at a narrow
  projection), 64x64 tiles side by side along N: a 64x128 CTA, twice as many CTAs.
  Otherwise 128x128 warpgroup tiles stacked along M (a 256x128 CTA; N = 1408 = 11 x 128
  rules out 256-wide columns).
  """
  if m <= 64:
    sms, k_blocks = backend.num_sms(), -(-k // 128)
    tiles, enough = -(-n // 128), sms * 3 // 4
    splits = 1 if tiles >= enough else next(
        (d for d in range(2, k_blocks // 4 + 1)
         if k_blocks % d == 0 and tiles * d >= enough), 1)
    narrow = splits == 1 and tiles < sms // 2
    return core.Config(tile_m=64, tile_n=32 if narrow else 64, wg_dimension="n",
                       max_concurrent_steps=6, epi_tile_n=32, k_splits=splits)
  if m <= 2048:
    if -(-m // 128) * -(-n // 128) < backend.num_sms() // 2:
      return core.Config(tile_m=64, tile_n=64, wg_dimension="n", max_concurrent_steps=4)
    return core.Config(tile_m=64, tile_n=128, wg_dimension="m", max_concurrent_steps=4)
  return core.Config(tile_m=128, tile_n=128, wg_dimension="m", max_concurrent_steps=4,
                     epi_tile_n=32)


def fp8_linear_pallas(x_q: jax.Array, x_scale: jax.Array, w_q: jax.Array,
                      w_scale: jax.Array, *, out_dtype=jnp.bfloat16,
                      config: core.Config | None = None) -> jax.Array:
  """x_q [M, K] fp8, x_scale [M] f32, w_q [N, K] fp8, w_scale [N] f32 -> [M, N].

  Same contract as fp8_linear_reference. M, N, K are zero-padded to the tiles (no copy at
  the model's shapes, which are multiples of 128 in N and K).
  """
  cfg = config or default_config(x_q.shape[0], w_q.shape[0], x_q.shape[1])
  return core.rowcol_linear(x_q, x_scale, w_q, w_scale, out_dtype=out_dtype, cfg=cfg)
