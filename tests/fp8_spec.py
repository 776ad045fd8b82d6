"""FP8 e4m3 quantization written from its specification (docs/fp8.md) in numpy, for tests.

The constants are written here, not imported from onerec_kernels, so that a wrong constant
in the package fails the tests instead of moving both sides: the largest value 448, the
e4m3 grid, round to nearest even, the scale rule. Arithmetic is IEEE: numpy's float32
multiply and divide round once.
"""

import ml_dtypes
import numpy as np

E4M3_MAX = 448.0  # largest finite float8_e4m3fn: (1 + 6/8) * 2^8
# The non-negative finite float8_e4m3fn values by code c = 8 e + m (exponent field e,
# mantissa m): m/8 * 2^-6 for e = 0 (subnormals), else (1 + m/8) * 2^(e - 7); code 127
# (e = 15, m = 7) is NaN. Codes are in increasing order, so an even code is an even mantissa.
E4M3_GRID = np.array([m / 8 * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0**(e - 7)
                      for e in range(16) for m in range(8)][:127])
INV_MAX = np.float32(1 / 448)  # fl32(1/448): the scale is amax times this


def round_e4m3(y) -> np.ndarray:
  """y clipped to +-448 and rounded to the nearest e4m3 value, ties to the even code, as
  float64 with y's sign (signed zeros kept); NaN stays NaN."""
  y = np.asarray(y, np.float64)
  a = np.minimum(np.abs(y), E4M3_MAX)
  hi = np.clip(np.searchsorted(E4M3_GRID, a), 1, len(E4M3_GRID) - 1)  # grid[hi-1] < a <= grid[hi]
  lo = hi - 1
  below, above = a - E4M3_GRID[lo], E4M3_GRID[hi] - a  # exact (Sterbenz)
  pick = np.where(below < above, lo, np.where(above < below, hi, np.where(lo % 2, hi, lo)))
  return np.where(np.isnan(y), np.nan, np.copysign(E4M3_GRID[pick], y))


def scale_from_amax(amax, *, flush: bool = False) -> np.ndarray:
  """float32 scales: fl32(amax * fl32(1/448)) (flush: a subnormal product flushed to
  zero); 1 where that is zero; NaN where amax is not finite."""
  amax = np.asarray(amax).astype(np.float32)
  with np.errstate(over="ignore", invalid="ignore"):
    s = amax * INV_MAX
  s = flush_subnormals(s) if flush else s
  s = np.where(s > 0, s, np.float32(1))
  return np.where(np.isfinite(amax), s, np.float32(np.nan)).astype(np.float32)


def group_amax(x, block_rows: int, block_cols: int) -> np.ndarray:
  """Largest magnitude (NaN if any) of each block_rows x block_cols block of the last two
  axes of x [..., M, K] -> [..., ceil(M / br), ceil(K / bc)]; edge blocks hold what fits."""
  *lead, m, k = x.shape
  mb, kb = -(-m // block_rows), -(-k // block_cols)
  pad = [(0, 0)] * len(lead) + [(0, mb * block_rows - m), (0, kb * block_cols - k)]
  a = np.pad(np.abs(x), pad).reshape(*lead, mb, block_rows, kb, block_cols)
  return a.max(axis=(-3, -1))


def expand(scale, m: int, k: int, block_rows: int, block_cols: int) -> np.ndarray:
  """Block scales [..., Mb, Kb] -> per-element [..., m, k]."""
  full = np.repeat(np.repeat(scale, block_rows, axis=-2), block_cols, axis=-1)
  return full[..., :m, :k]


def flush_subnormals(x) -> np.ndarray:
  """float32 x with subnormals replaced by zeros of their sign (FTZ / DAZ)."""
  x = np.asarray(x, np.float32)
  return np.where(np.abs(x) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), x), x)


def quantize(x, block_rows: int = 1, block_cols: int | None = None, *,
             flush: bool = False):
  """(values [..., M, K] float64 on the e4m3 grid, float32 scales) of x [..., M, K] in
  block_rows x block_cols groups; block_cols None: per row, scales [..., M]. x / scale is
  divided in x's precision (float32: IEEE, correctly rounded). flush: float32 arithmetic
  that flushes subnormal inputs and results to zero, as XLA's CPU backend does."""
  x = np.asarray(x)
  x = x if x.dtype == np.float64 else x.astype(np.float32)
  f = flush_subnormals if flush else (lambda v: v)
  x = f(x)
  m, k = x.shape[-2:]
  cols = k if block_cols is None else block_cols
  scale = scale_from_amax(group_amax(x, block_rows, cols), flush=flush)
  with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
    values = round_e4m3(f(x / expand(scale, m, k, block_rows, cols).astype(x.dtype)))
  return values, scale[..., 0] if block_cols is None else scale


def fp8_bytes(values) -> np.ndarray:
  """float8_e4m3fn codes of values on the e4m3 grid (an exact cast), both NaNs as 0x7f: a
  NaN's sign is not defined (the GPU's inf / inf is +NaN, x86's -NaN)."""
  codes = np.asarray(values).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
  return np.where(codes & 0x7F == 0x7F, np.uint8(0x7F), codes)
