"""GPU backend of the 4-bit-weight GEMMs: one Triton kernel that dequantizes inside its
main loop (Hopper).

The weights stay packed two to a byte in memory ([E, N, ceil(K/2)] uint8, formats.py's
layout) and are unpacked in registers, one scale group (1 x 128 INT4, 1 x 32 MXFP4) per
step: the nibbles become FP8 e4m3 (W4A8) or the activation's 16-bit dtype (W4A16),
exactly (int4 -7..7 and e2m1 values are exact in both), one tl.dot per group with FP32
accumulation, that group's partial times the weight's group scale added into the FP32
accumulator; the per-token activation scale (W4A8) is applied in the epilogue. This is
dequant_gemm's reference up to FP32 summation order.

Swap-AB: the weights are the MMA's M side (block_n weight rows a program) and the few
token rows its N side (block_t, from 16), so at the decode step, which reads every
routed expert's weights for one or two rows, the tensor cores are not spent on padding
rows. The ragged row tiles come from the FP8 GEMM core's tile_schedule; a dense product
is one group. The *_plan function gives the launch its grid and constexprs, so the CPU
tests (Triton's interpreter) launch what the GPU runs.
"""

import dataclasses

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from onerec_kernels import triton_launch
from onerec_kernels.gemm_mgpu.core import tile_schedule


@triton.jit
def _unpack(packed, E2M1: tl.constexpr, DTYPE: tl.constexpr):
  """Packed bytes [BN, G/2] uint8 -> their 4-bit values [BN, G] in DTYPE: element 2j from
  byte j's low nibble, 2j + 1 from its high one. Through FP16 bit patterns, exact and
  with no integer-to-float conversion: int4 code c (two's complement, -8..7) as the FP16
  bits 0x6400 | (c ^ 8), which read 1024 + 8 + c, minus 1032; an e2m1 code's sign, and
  its exponent and mantissa placed in FP16's low exponent bits, read as its value times
  2^-14 (bias 1 against 15; the subnormal 0.5 alike), times 2^14."""
  b = packed.to(tl.uint16)
  codes = tl.reshape(tl.join(b & 0xF, b >> 4), (packed.shape[0], 2 * packed.shape[1]))
  if E2M1:
    v = (((codes & 8) << 12) | ((codes & 7) << 9)).to(tl.float16, bitcast=True) * 16384.0
  else:
    v = (codes ^ 0x6408).to(tl.float16, bitcast=True) - 1032.0
  return v.to(DTYPE)


@triton.jit
def _e8m0(bits):
  """E8M0 codes (uint8) -> 2^(code - 127) in FP32 (code 0: the subnormal 2^-127; 255:
  NaN)."""
  e = bits.to(tl.int32)
  f = tl.where(e == 0, 0x00400000, tl.where(e == 255, 0x7FC00000, e << 23))
  return f.to(tl.float32, bitcast=True)


@triton.jit
def _dequant_gemm_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, sched_ptr, y_ptr,
                         N: tl.constexpr, K: tl.constexpr, E: tl.constexpr,
                         SLOTS: tl.constexpr, GROUP: tl.constexpr, E2M1: tl.constexpr,
                         E8M0: tl.constexpr, W4A8: tl.constexpr, IEEE: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
  """x [M, K] (fp8 e4m3 with per-token scales xs [M] f32 when W4A8; else 16- or 32-bit,
  xs unread), w [E, N, ceil(K/2)] packed 4-bit (e2m1 codes if E2M1, else int4), ws
  [E, N, ceil(K/GROUP)] (E8M0 codes uint8 if E8M0, else f32), sched [4, SLOTS]
  (tile_schedule's row_start, group, lo, hi) -> y [M, N]. Grid (cdiv(N, BLOCK_N),
  SLOTS): program (i, t) computes y[rows of slot t, weight rows i * BLOCK_N + ...] as
  acc [BLOCK_N, BLOCK_T] = W X^T; slots of the pseudo-group E (rows past the groups)
  store zeros."""
  KB: tl.constexpr = (K + 1) // 2  # bytes of a packed weight row
  KG: tl.constexpr = (K + GROUP - 1) // GROUP  # scale groups of a row
  t = tl.program_id(1)
  row_start = tl.load(sched_ptr + t)
  g = tl.load(sched_ptr + SLOTS + t)
  lo = tl.load(sched_ptr + 2 * SLOTS + t)
  hi = tl.load(sched_ptr + 3 * SLOTS + t)
  live = g < E
  n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] weight rows
  n_ok = n < N
  r = tl.arange(0, BLOCK_T)
  rows = row_start + r  # [BT] token rows
  r_ok = (r >= lo) & (r < hi)
  kk = tl.arange(0, GROUP)
  kb = tl.arange(0, GROUP // 2)
  w_row = (tl.minimum(g, E - 1) * N + n).to(tl.int64)  # [BN] rows of w viewed [E * N, .]
  acc = tl.zeros((BLOCK_N, BLOCK_T), tl.float32)
  for kg in range(0, tl.where(live, KG, 0)):
    k = kg * GROUP + kk  # [G]
    byte = kg * (GROUP // 2) + kb  # [G/2]
    packed = tl.load(w_ptr + w_row[:, None] * KB + byte[None, :],
                     mask=n_ok[:, None] & (byte < KB)[None, :], other=0)  # [BN, G/2]
    xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * K + k[None, :],
                 mask=r_ok[:, None] & (k < K)[None, :], other=0.0)  # [BT, G]
    w = _unpack(packed, E2M1, xt.dtype)  # [BN, G]
    if IEEE:
      part = tl.dot(w, tl.trans(xt), input_precision="ieee")
    else:
      part = tl.dot(w, tl.trans(xt))  # [BN, BT] f32
    s = tl.load(ws_ptr + w_row * KG + kg, mask=n_ok, other=0)  # [BN]
    acc += part * (_e8m0(s) if E8M0 else s)[:, None]
  if W4A8:
    acc *= tl.load(xs_ptr + rows, mask=r_ok & live, other=0.0)[None, :]
  tl.store(y_ptr + rows[None, :].to(tl.int64) * N + n[:, None],
           acc.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & r_ok[None, :])


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class Config:
  """The kernel's tiling: block_n weight rows a program (the MMA's M side: 64 or 128),
  block_t token rows a program (its N side, a power of two from 16, tl.dot's least),
  warps and software-pipeline stages. Each main-loop step is one scale group of K."""

  block_n: int
  block_t: int
  warps: int
  stages: int


def default_config(rows: int, groups: int) -> Config:
  """128 weight rows a program and the token tile of the mean rows a group (16 at the
  decode step's one or two rows an expert, up to 128), 4 warps, 3 stages: a heuristic
  (scripts/bench_frontier.py times it beside other tilings)."""
  block_t = min(128, max(16, _pow2(-(-rows // max(groups, 1)))))
  return Config(block_n=128, block_t=block_t, warps=4, stages=3)


def dequant_gemm_plan(m: int, n: int, k: int, groups: int, *, group: int, e2m1: bool,
                      e8m0: bool, w4a8: bool, dtype, config: Config | None = None
                      ) -> tuple[Config, int, dict]:
  """(config, schedule slots, constexprs) of _dequant_gemm_kernel for x [m, k] times
  weights [groups, n, ceil(k/2)] in 1 x `group` scale groups; the grid is
  (cdiv(n, config.block_n), slots). fp32 activations multiply in IEEE FP32 (Triton's
  default would be TF32), as the FP32 reference does."""
  cfg = config or default_config(m, groups)
  slots = tile_schedule(jnp.zeros((groups,), jnp.int32), m, cfg.block_t).shape[1]
  meta = dict(N=n, K=k, E=groups, SLOTS=slots, GROUP=group, E2M1=e2m1, E8M0=e8m0,
              W4A8=w4a8, IEEE=jnp.dtype(dtype) == jnp.float32, BLOCK_N=cfg.block_n,
              BLOCK_T=cfg.block_t)
  return cfg, slots, meta


def dequant_grouped_gemm(x: jax.Array, x_scale: jax.Array | None, w: jax.Array,
                         w_scale: jax.Array, group_sizes: jax.Array, *, group: int,
                         e2m1: bool, out_dtype, config: Config | None = None) -> jax.Array:
  """x [M, K] sorted by group (fp8 e4m3 with x_scale [M] f32 per token, or 16/32-bit with
  x_scale None), w [E, N, ceil(K/2)] packed 4-bit (e2m1 codes if e2m1, else int4), w_scale
  [E, N, ceil(K/group)] (float8_e8m0fnu or f32), group_sizes [E] -> [M, N] in out_dtype;
  rows past sum(group_sizes) are zero."""
  m, k = x.shape
  e, n, _ = w.shape
  e8m0 = w_scale.dtype == jnp.float8_e8m0fnu
  cfg, slots, meta = dequant_gemm_plan(
      m, n, k, e, group=group, e2m1=e2m1, e8m0=e8m0, w4a8=x_scale is not None,
      dtype=x.dtype, config=config)
  sched = tile_schedule(group_sizes, m, cfg.block_t)  # [4, slots]
  ws = jax.lax.bitcast_convert_type(w_scale, jnp.uint8) if e8m0 else w_scale
  xs = jnp.zeros((1,), jnp.float32) if x_scale is None else x_scale
  return triton_launch.triton_call(
      _dequant_gemm_kernel, x, xs, w, ws, sched,
      out=triton_launch.shape((m, n), out_dtype), grid=(-(-n // cfg.block_n), slots),
      num_warps=cfg.warps, num_stages=cfg.stages, **meta)
