"""INT8 W8A8 GEMMs on Hopper: the shared Mosaic GPU GEMM core with int8 wgmma (the FP8
rate on Hopper's tensor cores), int32 accumulation and the per-token x per-channel scales
in the epilogue ("rowcol"), dense for Linear and over a ragged tile schedule for experts."""

import dataclasses

import jax
import jax.numpy as jnp

from onerec_kernels.fp8_linear.pallas import default_config as linear_config
from onerec_kernels.gemm_mgpu import core
from onerec_kernels.grouped_gemm.pallas import default_config as grouped_16bit_config


def default_linear_config(m: int, n: int, k: int) -> core.Config:
  """The FP8 linear's tiling (int8 operands are one byte, as FP8's); a split K cut finer
  where needed, so each split's sum stays exact (core.INT8_SPLIT_K)."""
  cfg = linear_config(m, n, k)
  if cfg.k_splits == 1:
    return cfg
  k_tiles = -(-k // cfg.tile_k)
  splits = next(d for d in range(cfg.k_splits, k_tiles + 1)
                if k_tiles % d == 0 and k_tiles // d * cfg.tile_k <= core.INT8_SPLIT_K)
  return dataclasses.replace(cfg, k_splits=splits)


def default_grouped_config(m: int, n: int, k: int) -> core.Config:
  """The 16-bit grouped GEMM's tiling with 128-wide K steps (the same 128 bytes a row):
  no per-block promotion, so 128-row warpgroup tiles fit the registers (FP8's block
  scaling needs 64). Untuned on a GPU: scripts/bench_frontier.py times it."""
  return dataclasses.replace(grouped_16bit_config(m, n, k, fp8=False), tile_k=128)


def int8_linear_pallas(x_q: jax.Array, x_scale: jax.Array, w_q: jax.Array,
                       w_scale: jax.Array, *, out_dtype=jnp.bfloat16,
                       config: core.Config | None = None) -> jax.Array:
  """x_q [M, K] int8, x_scale [M], w_q [N, K] int8, w_scale [N] -> [M, N]; the contract
  of int8_linear_reference. M, N, K are zero-padded to the tiles."""
  cfg = config or default_linear_config(x_q.shape[0], w_q.shape[0], x_q.shape[1])
  return core.rowcol_linear(x_q, x_scale, w_q, w_scale, out_dtype=out_dtype, cfg=cfg)


def int8_grouped_gemm_pallas(x_q: jax.Array, x_scale: jax.Array, w_q: jax.Array,
                             w_scale: jax.Array, group_sizes: jax.Array, *,
                             out_dtype=jnp.bfloat16,
                             config: core.Config | None = None) -> jax.Array:
  """x_q [M, K] int8 sorted by group, x_scale [M], w_q [E, N, K] int8, w_scale [E, N],
  group_sizes [E] -> [M, N]; the contract of int8_grouped_gemm_reference."""
  m, k = x_q.shape
  e, n, _ = w_q.shape
  cfg = config or default_grouped_config(m, n, k)
  mp, np_, kp = (core.round_up(m, cfg.cta_m), core.round_up(n, cfg.cta_n),
                 core.round_up(k, cfg.tile_k))
  sa = core.pad_to(x_scale.astype(jnp.float32), (mp,))
  sb = core.pad_to(w_scale.astype(jnp.float32), (e + 1, np_))  # group E: the zero tail
  sched = core.tile_schedule(group_sizes, m, cfg.cta_m)
  y = core.gemm(core.pad_to(x_q, (mp, kp)), core.pad_to(w_q, (e, np_, kp)), sa, sb, sched,
                out_dtype=out_dtype, cfg=cfg, scaling="rowcol")
  return y if y.shape == (m, n) else y[:m, :n]
