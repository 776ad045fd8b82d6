"""GPU backend of quantize_activations: one Triton kernel, a few whole rows a program.

A row's source (plain, RMSNorm or SwiGLU; optionally gathered through a row index) is
read once, computed in FP32 in registers, and written as FP8 with its per-row or 1x128
scales: 3 bytes an element of traffic for a 16-bit RMSNorm input where XLA's norm plus
quantize moves 7. Triton, not Pallas Mosaic GPU: a row of K = 1408 or 5632 is a plain
masked vector load here, while Mosaic GPU's TMA boxes (<= 256 elements a dimension) and
layout inference made the same kernel a tiling exercise that did not lower. Rows are
independent; a program takes Config.rows of them so that each SM keeps enough bytes in
flight.
"""

import dataclasses

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from onerec_kernels import triton_launch
from onerec_kernels.quantize.reference import BLOCK, FP8_DTYPE, FP8_MAX


@triton.jit
def _max_nan(a, b):
  """max that keeps NaN (the GPU's fmax drops it): a group holding a NaN has a NaN amax,
  as in the reference."""
  return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _scale_from_amax(amax, QMAX: tl.constexpr):
  """The reference's scale_from_amax: amax * fl32(1 / QMAX); 1 where that is zero; NaN
  where amax is NaN or Inf (the whole group quantizes to NaN)."""
  scale = amax * (1.0 / QMAX)
  scale = tl.where(scale > 0, scale, 1.0)
  return tl.where(amax < float("inf"), scale, float("nan"))


@triton.jit
def _divide(x, scale, smallest):
  """x / scale rounded to nearest, as the reference's (Triton's "/" is approximate).

  Markstein's division: from inv = RN(1 / scale) and q = RN(x * inv), within an ulp of
  x / scale, the exact residual x - q * scale (one fma) corrects q to the correctly
  rounded quotient (Muller et al., Handbook of Floating-Point Arithmetic, thm 5.4): two
  fmas an element against div_rn's longer sequence, half the pass's time at K = 1408.
  The theorem needs no underflow, and the GPU flushes subnormal operands to zero: a
  quotient that underflows keeps q's sign (it quantizes to a signed zero), and a program
  whose smallest scale is below 2^-90 divides with div_rn (there a flushed residual could
  move the FP8 rounding).
  """
  if smallest < 8.077935669463161e-28:  # 2^-90
    y = tl.math.div_rn(x, scale)
  else:
    inv = tl.math.div_rn(1.0, scale)
    q = x * inv
    y = tl.fma(tl.fma(-q, scale, x), inv, q)
    y = tl.where(q == 0.0, q, y)
  return y


@triton.jit
def _quantize_kernel(src_ptr, weight_ptr, rows_ptr, live_ptr, q_ptr, s_ptr,
                     K: tl.constexpr, SRC_STRIDE: tl.constexpr, NB: tl.constexpr,
                     KB: tl.constexpr, ROWS: tl.constexpr, EPS: tl.constexpr,
                     QMAX: tl.constexpr, MODE: tl.constexpr, GATHER: tl.constexpr,
                     PER_BLOCK: tl.constexpr):
  """MODE 0: plain, 1: RMSNorm (weight, EPS), 2: SwiGLU of [gate; up] (SRC_STRIDE = 2K).
  Writes q [R, K] fp8 and s [R] (PER_BLOCK: [R, KB]) f32 for output rows
  ROWS * program_id + [0, ROWS) (ROWS divides R); output row r < live_ptr[0] reads source
  row rows[r] (GATHER) or r, a row past it is a zero row (a GEMM tile's padding). The
  live count is read at run time, so padded and unpadded launches share a kernel."""
  r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)  # [ROWS]
  live = r < tl.load(live_ptr)
  src = tl.load(rows_ptr + r, mask=live, other=0).to(tl.int64) if GATHER else r
  offs = tl.arange(0, NB)[:, None] * 128 + tl.arange(0, 128)[None, :]  # [NB, 128]
  inb = (offs < K)[None]  # [1, NB, 128], broadcast over the rows
  at = src[:, None, None] * SRC_STRIDE + offs[None]
  x = tl.load(src_ptr + at, mask=inb & live[:, None, None], other=0.0).to(tl.float32)
  if MODE == 1:
    inv = tl.rsqrt(tl.sum(tl.sum(x * x, axis=2), axis=1) / K + EPS)  # [ROWS]
    w = tl.load(weight_ptr + offs, mask=offs < K, other=0.0).to(tl.float32)
    x = x * inv[:, None, None] * w[None]
  elif MODE == 2:
    up = tl.load(src_ptr + at + K, mask=inb & live[:, None, None], other=0.0).to(tl.float32)
    x = x * tl.sigmoid(x) * up
  amax = tl.reduce(tl.abs(x), 2, _max_nan)  # [ROWS, NB]
  if PER_BLOCK:
    scale = _scale_from_amax(amax, QMAX)  # [ROWS, NB]
    kb = tl.arange(0, NB)
    tl.store(s_ptr + r[:, None] * KB + kb[None], scale, mask=(kb < KB)[None])
    # The smallest finite scale picks the division (a NaN block divides to NaN either way).
    smallest = tl.min(tl.min(tl.where(scale == scale, scale, 1.0), axis=1), axis=0)
    y = _divide(x, scale[:, :, None], smallest)
  else:
    scale = _scale_from_amax(tl.reduce(amax, 1, _max_nan), QMAX)  # [ROWS]
    tl.store(s_ptr + r, scale)
    smallest = tl.min(tl.where(scale == scale, scale, 1.0), axis=0)
    y = _divide(x, scale[:, None, None], smallest)
  y = tl.clamp(y, -QMAX, QMAX, propagate_nan=tl.PropagateNan.ALL)
  tl.store(q_ptr + r[:, None, None] * K + offs[None], y.to(q_ptr.dtype.element_ty),
           mask=inb)


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class Config:
  """Rows a program quantizes (a power of two) and its warps."""

  rows: int = 1
  num_warps: int = 4

  def __post_init__(self):
    if self.rows < 1 or self.rows & (self.rows - 1):
      raise ValueError(f"Config.rows must be a power of two, got {self.rows}")


def default_config(k: int) -> Config:
  """About 8192 source elements a program (64 a thread), 4 warps; 8 past 8192 a row.

  The fastest of rows 1-8 x warps 4, 8 at every moe-4b pass (K = 1408: 4 rows, 4 warps;
  bench/results/quantize_h200.json)."""
  width = _pow2(-(-k // BLOCK)) * BLOCK
  return Config(rows=max(1, 8192 // width), num_warps=4 if width <= 8192 else 8)


def launch_meta(src_shape: tuple[int, int], r: int, *, k: int, mode: int, eps: float,
                gather: bool, per_block: bool, config: Config | None = None
                ) -> tuple[tuple[int], int, dict]:
  """(grid, num_warps, constexprs) of one _quantize_kernel launch over r output rows of
  a [R0, SRC_STRIDE] source: shared by the JAX launch and the interpreter tests. A
  program's rows are config's, capped by the largest power of two dividing r."""
  cfg = config or default_config(k)
  rows = min(cfg.rows, r & -r) if r else 1
  kb = -(-k // BLOCK)
  meta = dict(K=k, SRC_STRIDE=src_shape[1], NB=_pow2(kb), KB=kb, ROWS=rows,
              EPS=float(eps), QMAX=FP8_MAX, MODE=mode, GATHER=gather, PER_BLOCK=per_block)
  return (r // rows,), cfg.num_warps, meta


def quantize(src: jax.Array, weight: jax.Array | None, rows: jax.Array | None, *,
             k: int, mode: int, eps: float, per_block: bool, out_rows: int | None = None,
             config: Config | None = None) -> tuple[jax.Array, jax.Array]:
  """src [R0, SRC_STRIDE] (16/32-bit) -> (q [R, k] fp8, scale [R] or [R, ceil(k/128)]);
  the activation's rows are len(rows) when rows are given, else R0, and R = out_rows
  (default: those rows) appends zero rows (value 0, scale 1) after them."""
  live = src.shape[0] if rows is None else rows.shape[0]
  r = live if out_rows is None else out_rows
  if r < live:
    raise ValueError(f"out_rows={r} is fewer than the activation's {live} rows")
  none = jnp.zeros((1,), jnp.int32)
  grid, num_warps, meta = launch_meta(src.shape, r, k=k, mode=mode, eps=eps,
                                      gather=rows is not None, per_block=per_block,
                                      config=config)
  scale_shape = (r, meta["KB"]) if per_block else (r,)
  return triton_launch.triton_call(
      _quantize_kernel, src, none if weight is None else weight,
      none if rows is None else rows.astype(jnp.int32), jnp.full((1,), live, jnp.int32),
      out=(triton_launch.shape((r, k), FP8_DTYPE),
           triton_launch.shape(scale_shape, jnp.float32)),
      grid=grid, num_warps=num_warps, **meta)
