"""GPU backend of the 4-bit-weight GEMMs: one Triton kernel that dequantizes inside its
main loop (Hopper).

The weights stay packed two to a byte in memory ([E, N, ceil(K/2)] uint8, formats.py's
layout) and are unpacked in registers, one scale group (1 x 128 INT4, 1 x 32 MXFP4) per
step: the nibbles become FP8 e4m3 (W4A8) or the activation's 16-bit dtype (W4A16),
exactly (int4 -8..7 and e2m1 values are exact in both), one tl.dot per group (or two:
Config.decode) with FP32 accumulation, that group's partial times the weight's group
scale added into the FP32 accumulator; the per-token activation scale (W4A8) is applied
in the epilogue. Config.k_splits > 1 splits K over programs that write FP32 partial
products, summed after. This is dequant_gemm's reference up to FP32 summation order.

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


# Four packed bytes (one 32-bit word; element 2j the low nibble of byte j) of int4 codes ->
# FP8 e4m3: $0 the four low nibbles' values (the even elements), $1 the high ones'. The
# sign flip (xor 8) makes a code c the unsigned c + 8; FP16 bits 0x6400 | (c + 8) read
# 1032 + c, minus 1032 is c exactly; pairs two bytes apart share one FP16x2 register, and
# cvt converts a pair to two e4m3 bytes (its low half to the low byte), which prmt puts
# back in byte order.
_INT4_TO_E4M3 = tl.constexpr(
    "{\n.reg .b32 w, t, k, e, o;\n.reg .b16 l02, l13, h02, h13;\n"
    "xor.b32 w, $2, 0x88888888;\nmov.b32 k, 0x64086408;\n"
    + "".join(f"shr.u32 t, w, {shift};\nlop3.b32 t, t, 0x000F000F, 0x64006400, 0xea;\n"
              f"sub.f16x2 t, t, k;\ncvt.rn.satfinite.e4m3x2.f16x2 {pair}, t;\n"
              for shift, pair in ((0, "l02"), (8, "l13"), (4, "h02"), (12, "h13")))
    + "mov.b32 e, {l02, l13};\nprmt.b32 $0, e, e, 0x3120;\n"
    "mov.b32 o, {h02, h13};\nprmt.b32 $1, o, o, 0x3120;\n}")


@triton.jit
def _int4_to_e4m3(packed):
  """Packed bytes [BN, G/2] uint8 of int4 codes -> (even elements, odd elements), each
  [BN, G/2] FP8 e4m3, through _INT4_TO_E4M3."""
  even, odd = tl.inline_asm_elementwise(_INT4_TO_E4M3, "=r,=r,r", [packed],
                                        dtype=(tl.uint8, tl.uint8), is_pure=True, pack=4)
  return even.to(tl.float8e4nv, bitcast=True), odd.to(tl.float8e4nv, bitcast=True)


@triton.jit
def _decode(codes, E2M1: tl.constexpr, DTYPE: tl.constexpr):
  """4-bit codes (8- or 16-bit integers, one code each) -> their values in DTYPE, exactly,
  through FP16 bit patterns and with no integer-to-float conversion: int4 code c (two's
  complement, -8..7) as the FP16 bits 0x6400 | (c ^ 8), which read 1024 + 8 + c, minus
  1032; an e2m1 code's sign, and its exponent and mantissa placed in FP16's low exponent
  bits, read as its value times 2^-14 (bias 1 against 15; the subnormal 0.5 alike),
  times 2^14."""
  c = codes.to(tl.uint16)
  if E2M1:
    v = (((c & 8) << 12) | ((c & 7) << 9)).to(tl.float16, bitcast=True) * 16384.0
  else:
    v = (c ^ 0x6408).to(tl.float16, bitcast=True) - 1032.0
  return v.to(DTYPE)


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
  """acc + a b (FP32; IEEE: exact FP32 products, not TF32)."""
  if IEEE:
    return tl.dot(a, b, acc, input_precision="ieee")
  return tl.dot(a, b, acc)


@triton.jit
def _group_product(packed, xt, E2M1: tl.constexpr, EVEN_ODD: tl.constexpr,
                   PTX: tl.constexpr, IEEE: tl.constexpr):
  """One scale group's W X^T: packed bytes [BN, G/2] (element 2j the low nibble of byte j)
  and activations xt [BT, G] -> [BN, BT] FP32.

  Interleaved (the default): the nibbles widened to 16 bits and interleaved into the
  group's order, one tl.dot. EVEN_ODD: two tl.dots of half the group, the even elements'
  and the odd ones': each byte's nibbles decode in place and it is the small activation
  tile that is split (ptxas spends about as many instructions on the interleave as on the
  decoding; an FP8 tl.dot takes at least 32 of K, so G >= 64). PTX (with EVEN_ODD, int4
  codes to FP8): the decoding through _INT4_TO_E4M3."""
  bn: tl.constexpr = packed.shape[0]
  bt: tl.constexpr = xt.shape[0]
  g: tl.constexpr = xt.shape[1]
  acc = tl.zeros((bn, bt), tl.float32)
  if EVEN_ODD:
    x_even, x_odd = tl.split(tl.reshape(xt, (bt, g // 2, 2)))  # [BT, G/2] each
    if PTX:
      w_even, w_odd = _int4_to_e4m3(packed)  # [BN, G/2] each
    else:
      w_even = _decode(packed & 0xF, E2M1, xt.dtype)
      w_odd = _decode(packed >> 4, E2M1, xt.dtype)
    return _dot(w_odd, tl.trans(x_odd), _dot(w_even, tl.trans(x_even), acc, IEEE), IEEE)
  b = packed.to(tl.uint16)
  codes = tl.reshape(tl.join(b & 0xF, b >> 4), (bn, g))  # [BN, G]
  return _dot(_decode(codes, E2M1, xt.dtype), tl.trans(xt), acc, IEEE)


@triton.jit
def _e8m0(bits):
  """E8M0 codes (uint8) -> 2^(code - 127) in FP32 (code 0: the subnormal 2^-127; 255:
  NaN)."""
  e = bits.to(tl.int32)
  f = tl.where(e == 0, 0x00400000, tl.where(e == 255, 0x7FC00000, e << 23))
  return f.to(tl.float32, bitcast=True)


@triton.jit
def _dequant_gemm_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, sched_ptr, y_ptr,
                         M: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                         E: tl.constexpr, SLOTS: tl.constexpr, GROUP: tl.constexpr,
                         E2M1: tl.constexpr, E8M0: tl.constexpr, W4A8: tl.constexpr,
                         IEEE: tl.constexpr, EVEN_ODD: tl.constexpr,
                         PTX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
                         K_SPLITS: tl.constexpr):
  """x [M, K] (fp8 e4m3 with per-token scales xs [M] f32 when W4A8; else 16- or 32-bit,
  xs unread), w [E, N, ceil(K/2)] packed 4-bit (e2m1 codes if E2M1, else int4), ws
  [E, N, ceil(K/GROUP)] (E8M0 codes uint8 if E8M0, else f32), sched [4, SLOTS]
  (tile_schedule's row_start, group, lo, hi) -> y [M, N], or [K_SPLITS, M, N] FP32
  partial products when K_SPLITS > 1. Grid (cdiv(N, BLOCK_N), SLOTS, K_SPLITS): program
  (i, t, s) computes y[s, rows of slot t, weight rows i * BLOCK_N + ...] as acc
  [BLOCK_N, BLOCK_T] = W X^T over split s's scale groups; slots of the pseudo-group E
  (rows past the groups) store zeros. M is read only with K_SPLITS > 1 (else 0, so that
  row counts share kernels). EVEN_ODD, PTX: how a group decodes
  (_group_product)."""
  KB: tl.constexpr = (K + 1) // 2  # bytes of a packed weight row
  KG: tl.constexpr = (K + GROUP - 1) // GROUP  # scale groups of a row
  SPLIT_KG: tl.constexpr = (KG + K_SPLITS - 1) // K_SPLITS  # scale groups of a split
  t = tl.program_id(1)
  split = tl.program_id(2)
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
  kg0 = split * SPLIT_KG
  for kg in range(kg0, tl.where(live, tl.minimum(kg0 + SPLIT_KG, KG), kg0)):
    k = kg * GROUP + kk  # [G]
    byte = kg * (GROUP // 2) + kb  # [G/2]
    packed = tl.load(w_ptr + w_row[:, None] * KB + byte[None, :],
                     mask=n_ok[:, None] & (byte < KB)[None, :], other=0)  # [BN, G/2]
    xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * K + k[None, :],
                 mask=r_ok[:, None] & (k < K)[None, :], other=0.0)  # [BT, G]
    part = _group_product(packed, xt, E2M1, EVEN_ODD, PTX, IEEE)  # [BN, BT] f32
    s = tl.load(ws_ptr + w_row * KG + kg, mask=n_ok, other=0)  # [BN]
    acc += part * (_e8m0(s) if E8M0 else s)[:, None]
  if W4A8:
    acc *= tl.load(xs_ptr + rows, mask=r_ok & live, other=0.0)[None, :]
  out = y_ptr + split.to(tl.int64) * (M * N)  # this split's partial product
  tl.store(out + rows[None, :].to(tl.int64) * N + n[:, None],
           acc.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & r_ok[None, :])


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


# How a scale group's weights decode (_group_product): "interleave" (one product), or as
# the even and odd elements' two products, decoded elementwise or ("even_odd_ptx", INT4
# weights under FP8 activations) through PTX.
DECODINGS = ("interleave", "even_odd", "even_odd_ptx")


@dataclasses.dataclass(frozen=True)
class Config:
  """The kernel's tiling: block_n weight rows a program (the MMA's M side: 64 or 128),
  block_t token rows a program (its N side, a power of two from 16, tl.dot's least),
  warps and software-pipeline stages; k_splits programs share each output tile, each
  over its range of scale groups, writing FP32 partial products summed after (for
  few-row products, whose tiles alone leave most SMs idle); decode, one of DECODINGS.
  Each main-loop step is one scale group of K."""

  block_n: int
  block_t: int
  warps: int
  stages: int
  k_splits: int = 1
  decode: str = "interleave"

  def __post_init__(self):
    if self.k_splits < 1:
      raise ValueError(f"Config.k_splits must be at least 1, got {self.k_splits}")
    if self.decode not in DECODINGS:
      raise ValueError(f"Config.decode must be one of {DECODINGS}, got {self.decode!r}")


def default_config(rows: int, groups: int) -> Config:
  """128 weight rows a program and the token tile of the mean rows a group (16 at the
  decode step's one or two rows an expert, up to 128), 4 warps, 3 stages, interleaved
  decoding, no K split: a heuristic (scripts/bench_frontier.py times it beside other
  tilings, the K splits and the other decodings among them)."""
  block_t = min(128, max(16, _pow2(-(-rows // max(groups, 1)))))
  return Config(block_n=128, block_t=block_t, warps=4, stages=3)


def dequant_gemm_plan(m: int, n: int, k: int, groups: int, *, group: int, e2m1: bool,
                      e8m0: bool, w4a8: bool, dtype, config: Config | None = None
                      ) -> tuple[Config, int, dict]:
  """(config, schedule slots, constexprs) of _dequant_gemm_kernel for x [m, k] times
  weights [groups, n, ceil(k/2)] in 1 x `group` scale groups; the grid is
  (cdiv(n, config.block_n), slots, config.k_splits). fp32 activations multiply in IEEE
  FP32 (Triton's default would be TF32), as the FP32 reference does. The even/odd
  decodings need groups of at least 64 (else the group interleaves); the PTX one applies
  to INT4 weights under FP8 activations where the kernel is compiled (Triton's
  interpreter, TRITON_INTERPRET=1, runs no inline PTX: there it decodes elementwise)."""
  cfg = config or default_config(m, groups)
  slots = tile_schedule(jnp.zeros((groups,), jnp.int32), m, cfg.block_t).shape[1]
  meta = dict(M=m if cfg.k_splits > 1 else 0, N=n, K=k, E=groups, SLOTS=slots,
              GROUP=group, E2M1=e2m1, E8M0=e8m0, W4A8=w4a8, IEEE=jnp.dtype(dtype) == jnp.float32,
              EVEN_ODD=cfg.decode != "interleave" and group >= 64,
              PTX=(cfg.decode == "even_odd_ptx" and group >= 64 and w4a8 and not e2m1
                   and not triton.knobs.runtime.interpret),
              BLOCK_N=cfg.block_n, BLOCK_T=cfg.block_t, K_SPLITS=cfg.k_splits)
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
  splits = cfg.k_splits
  y = triton_launch.triton_call(
      _dequant_gemm_kernel, x, xs, w, ws, sched,
      out=triton_launch.shape((m, n) if splits == 1 else (splits, m, n),
                              out_dtype if splits == 1 else jnp.float32),
      grid=(-(-n // cfg.block_n), slots, splits), num_warps=cfg.warps,
      num_stages=cfg.stages, **meta)
  return y if splits == 1 else y.sum(0).astype(out_dtype)
