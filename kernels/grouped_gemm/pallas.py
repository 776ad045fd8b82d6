"""Grouped GEMM on Hopper for the MoE experts: the shared Mosaic GPU GEMM core over a
ragged tile schedule (tiles never straddle two experts), in bf16/fp16 or in FP8 with
1x128 activation and 128x128 weight block scales promoted per K block."""

import jax
import jax.numpy as jnp

from onerec_kernels.gemm_mgpu import core
from onerec_kernels.quantize.reference import BLOCK


def default_config(m: int, n: int, k: int, *, fp8: bool) -> core.Config:
  """Heuristic tiling per shape (measured on an H100, bench/results/grouped_gemm_h100.json).

  FP8 with block scales: 64x128 warpgroup tiles stacked along M, since a 128x128 tile
  plus the per-K-block partial accumulator runs out of registers (docs/kernels_gemm.md);
  tiles walk M fastest (2% faster than N fastest at moe-4b). At K <= 2048 three compute
  warpgroups (a 192x128 CTA), whose wgmmas fill the tensor cores while another promotes
  its partial product: 10-14% faster than two at moe-4b (K = 1408), but 6% slower at
  K = 7168 ("alt_compute_wgs" in the benchmark JSON). Few rows
  (decode step 1: about 2 rows per expert): a 64-row CTA, the warpgroups side by side
  along N, a deeper pipeline to stream the weights (measured 8-10% faster at 96 rows).
  16-bit: 128x128 warpgroup tiles side by side along N (a 128x256 CTA, 11% faster than
  128x128 at moe-4b gate_up) where N allows, else 64x128 stacked along M; 64-wide K steps.
  """
  if fp8 and m < 1024:
    return core.Config(tile_m=64, tile_n=64, tile_k=BLOCK, wg_dimension="n",
                       max_concurrent_steps=6)
  if fp8:
    return core.Config(tile_m=64, tile_n=128, tile_k=BLOCK, wg_dimension="m",
                       max_concurrent_steps=4, grid_minor_dim=0,
                       compute_wgs=3 if k <= 2048 else 2)
  if m >= 1024 and n % 256 == 0:
    return core.Config(tile_m=128, tile_n=128, tile_k=64, wg_dimension="n",
                       max_concurrent_steps=3)
  return core.Config(tile_m=64, tile_n=128, tile_k=64, wg_dimension="m",
                     max_concurrent_steps=4)


def _pad_operands(x, w, cfg):
  m, k = x.shape
  e, n, _ = w.shape
  mp, np_, kp = (core.round_up(m, cfg.cta_m), core.round_up(n, cfg.cta_n),
                 core.round_up(k, cfg.tile_k))
  return core.pad_to(x, (mp, kp)), core.pad_to(w, (e, np_, kp))


def grouped_gemm_pallas(x: jax.Array, w: jax.Array, group_sizes: jax.Array, *,
                        out_dtype=None, config: core.Config | None = None) -> jax.Array:
  """x [M, K] sorted by group, w [E, N, K] (16-bit) -> [M, N]; as grouped_gemm_reference."""
  m, k = x.shape
  n = w.shape[1]
  out_dtype = out_dtype or x.dtype
  cfg = config or default_config(m, n, k, fp8=False)
  xp, wp = _pad_operands(x, w.astype(x.dtype), cfg)
  sched = core.tile_schedule(group_sizes, m, cfg.cta_m)
  y = core.gemm(xp, wp, schedule=sched, out_dtype=out_dtype, cfg=cfg)
  return y if y.shape == (m, n) else y[:m, :n]


def fp8_grouped_gemm_pallas(x_q: jax.Array, x_scale: jax.Array, w_q: jax.Array,
                            w_scale: jax.Array, group_sizes: jax.Array, *,
                            out_dtype=jnp.bfloat16,
                            config: core.Config | None = None) -> jax.Array:
  """Block-scaled FP8 grouped GEMM; the contract of fp8_grouped_gemm_reference.

  x_q [M, K] fp8 sorted by group, x_scale [M, Kb], w_q [E, N, K] fp8,
  w_scale [E, Nb, Kb] -> [M, N].
  """
  m, k = x_q.shape
  e, n, _ = w_q.shape
  cfg = config or default_config(m, n, k, fp8=True)
  assert cfg.tile_k == BLOCK, cfg
  xp, wp = _pad_operands(x_q, w_q, cfg)
  mp, kp = xp.shape
  np_ = wp.shape[1]
  kb = kp // BLOCK
  sa = core.pad_to(x_scale.astype(jnp.float32).T, (kb, mp))  # [Kb, Mp]
  sb = jnp.repeat(w_scale.astype(jnp.float32), BLOCK, axis=1)  # [E, Nb*128, Kb]
  sb = core.pad_to(sb[:, :np_].transpose(0, 2, 1), (e + 1, kb, np_))  # [E+1, Kb, Np]
  sched = core.tile_schedule(group_sizes, m, cfg.cta_m)
  y = core.gemm(xp, wp, sa, sb, sched, out_dtype=out_dtype, cfg=cfg, scaling="block")
  return y if y.shape == (m, n) else y[:m, :n]
