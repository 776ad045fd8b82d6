"""quantize_activations: the reference against the specification written in numpy
(tests/fp8_spec.py: 448, the e4m3 grid, round to nearest even, the scale and NaN rules),
at FP8 rounding ties and for NaN and Inf groups; the Triton kernel against both (in
Triton's CPU interpreter off the GPU, through jax-triton on it); the entry point's errors."""

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fp8_spec
from onerec_kernels.quantize import (RMSNormOf, RowsOf, SwiGLUOf, activation_shape,
                                     dequantize_blocks, dequantize_rows,
                                     quantize_activations, quantize_activations_reference,
                                     quantize_blocks, quantize_rows)
from triton_interpret import interpreted

rng = np.random.default_rng(0)


def _x(shape, scale=3.0):
  """Random rows with an all-zero row and values beyond 448 in row 0."""
  x = (rng.standard_normal(shape) * scale).astype(np.float32)
  x[1] = 0.0
  x[0, :4] = [900.0, -2000.0, 460.0, 1e4]
  return x


# XLA's CPU backend flushes subnormal float32 inputs and results to zero (FTZ / DAZ); the
# GPU backends and Triton's interpreter keep them (docs/fp8.md).
XLA_FLUSHES = jax.default_backend() == "cpu"


def _spec(y: np.ndarray, block: int | None, flush: bool = False):
  """The specification's (values, scales) of per-row or 1 x block quantization."""
  return fp8_spec.quantize(y, 1, block, flush=flush)


def test_spec_grid_is_float8_e4m3fn():
  """The grid written from the format's definition is ml_dtypes' and torch's
  float8_e4m3fn, 448 its largest value: their casts are oracles elsewhere."""
  import torch
  codes = np.arange(127, dtype=np.uint8)
  np.testing.assert_array_equal(codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64),
                                fp8_spec.E4M3_GRID)
  np.testing.assert_array_equal(
      torch.from_numpy(codes).view(torch.float8_e4m3fn).double().numpy(), fp8_spec.E4M3_GRID)
  assert fp8_spec.E4M3_GRID[-1] == 448.0 and np.isnan(
      np.uint8(127).view(ml_dtypes.float8_e4m3fn).astype(np.float32))


def _f64_activation(kind, x, w=None, eps=1e-6):
  x = x.astype(np.float64)
  if kind == "rmsnorm":
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
  if kind == "swiglu":
    gate, up = np.split(x, 2, axis=-1)
    with np.errstate(over="ignore"):  # exp(2000): silu(-2000) = -0
      return gate / (1 + np.exp(-gate)) * up
  return x


def _source(kind, x, w=None):
  x = jnp.asarray(x)
  if kind == "rmsnorm":
    return RMSNormOf(x, jnp.asarray(w))
  return SwiGLUOf(x) if kind == "swiglu" else x


@pytest.mark.parametrize("kind", ["plain", "rmsnorm", "swiglu"])
@pytest.mark.parametrize("block", [None, 128])
def test_reference_against_float64(kind, block):
  x = _x((9, 2 * 300))
  w = rng.uniform(0.5, 2.0, x.shape[-1]).astype(np.float32)
  q, s = quantize_activations_reference(_source(kind, x, w), block=block)
  y = _f64_activation(kind, x, w)
  q64, s64 = _spec(y, block)
  chex.assert_shape(q, y.shape)
  chex.assert_shape(s, y.shape[:1] + ((-(-y.shape[1] // 128),) if block else ()))
  np.testing.assert_allclose(np.asarray(s), s64, rtol=2e-6)
  # One FP8 step apart where the FP32 and float64 activations round differently.
  diff = np.abs(np.asarray(q, np.float64) - q64)
  assert np.all(diff <= np.abs(q64) / 8 + 2.0 ** -9) and np.mean(diff > 0) < 0.01
  assert np.all(np.asarray(s)[1] == 1.0) and np.all(np.asarray(q, np.float64)[1] == 0)


def test_reference_gathers_rows():
  x = _x((6, 256))
  rows = jnp.array([5, 0, 0, 3, 2], jnp.int32)
  q, s = quantize_activations_reference(RowsOf(jnp.asarray(x), rows), block=128)
  q2, s2 = quantize_activations_reference(jnp.asarray(x)[rows], block=128)
  chex.assert_trees_all_equal((q, s), (q2, s2))


def _run_kernel(mod, kind, x, w, rows, block, fp8=False, config=None, out_rows=None):
  """The Triton kernel in the interpreter on torch CPU tensors, launched as the JAX
  wrapper launches it (config: rows a program; out_rows: zero rows appended up to it):
  (values as float32, or as float8_e4m3fn with fp8, scales)."""
  import torch
  k = activation_shape(_source(kind, x, w))[-1]
  live = x.shape[0] if rows is None else len(rows)
  r = out_rows or live
  kb = -(-k // 128)
  q = torch.full((r, k), float("nan"), dtype=torch.float8_e4m3fn)  # unwritten shows
  s = torch.full((r, kb) if block else (r,), float("nan"), dtype=torch.float32)
  none = torch.zeros(1, dtype=torch.int32)
  grid, _, meta = mod.launch_meta(
      x.shape, r, k=k, mode={"plain": 0, "rmsnorm": 1, "swiglu": 2}[kind], eps=1e-6,
      gather=rows is not None, per_block=block is not None, config=config)
  mod._quantize_kernel[grid](
      torch.from_numpy(x), none if w is None else torch.from_numpy(w),
      none if rows is None else torch.from_numpy(np.asarray(rows, np.int32)),
      torch.tensor([live], dtype=torch.int32), q, s, **meta)
  values = q.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn) if fp8 else q.float().numpy()
  return values, s.numpy()


@pytest.mark.parametrize("kind,k", [("plain", 300), ("rmsnorm", 1408), ("swiglu", 200),
                                    ("rmsnorm", 100)])
@pytest.mark.parametrize("block", [None, 128])
@pytest.mark.parametrize("gather", [False, True])
@pytest.mark.parametrize("rows_per_program", [1, 4])
def test_triton_kernel_matches_reference_interpret(kind, k, block, gather,
                                                   rows_per_program):
  """At 12 rows (gathered: 8 rows, repeats among them) 4 a program splits them into
  whole programs, every output row written once by the program it belongs to."""
  mod = interpreted("onerec_kernels.quantize.triton_gpu")
  x = _x((12, 2 * k if kind == "swiglu" else k))
  w = rng.uniform(0.5, 2.0, k).astype(np.float32) if kind == "rmsnorm" else None
  rows = np.array([11, 1, 1, 0, 3, 2, 7, 5]) if gather else None
  config = mod.Config(rows=rows_per_program)
  assert mod.launch_meta(x.shape, 12 if rows is None else 8, k=k, mode=0, eps=0.0,
                         gather=gather, per_block=False,
                         config=config)[2]["ROWS"] == rows_per_program
  q, s = _run_kernel(mod, kind, x, w, rows, block, config=config)
  q_ref, s_ref = quantize_activations_reference(
      _source(kind, x, w) if rows is None else RowsOf(_source(kind, x, w), jnp.asarray(rows)),
      block=block)
  # Scales within an ulp (the kernel's rsqrt), FP8 values equal but for rounding ties
  # that the last bit of a scale moves; plain mode does the reference's operations.
  np.testing.assert_allclose(s, np.asarray(s_ref), rtol=3e-7)
  q_ref = np.asarray(q_ref.astype(jnp.float32))
  if kind == "plain":
    np.testing.assert_array_equal(q, q_ref)
  assert np.mean(q != q_ref) < 0.002, np.mean(q != q_ref)
  assert np.all(np.abs(q - q_ref) <= np.abs(q_ref) / 8 + 2.0 ** -9)


@pytest.mark.parametrize("kind,k", [("plain", 300), ("rmsnorm", 200), ("swiglu", 130)])
@pytest.mark.parametrize("block", [None, 128])
@pytest.mark.parametrize("gather", [False, True])
def test_triton_kernel_pads_rows_interpret(kind, k, block, gather):
  """Output rows past the activation's (a GEMM tile's padding) are zero rows, value 0 and
  scale 1, as the reference quantizes appended zero rows; the real rows are as unpadded.
  5 live rows of 16, 4 a program: one program holds live and padding rows."""
  mod = interpreted("onerec_kernels.quantize.triton_gpu")
  x = _x((5, 2 * k if kind == "swiglu" else k))
  w = rng.uniform(0.5, 2.0, k).astype(np.float32) if kind == "rmsnorm" else None
  rows = np.array([4, 0, 0, 3, 1]) if gather else None
  config = mod.Config(rows=4)
  q, s = _run_kernel(mod, kind, x, w, rows, block, config=config, out_rows=16)
  q5, s5 = _run_kernel(mod, kind, x, w, rows, block, config=config)
  src = _source(kind, x, w) if rows is None else RowsOf(_source(kind, x, w),
                                                        jnp.asarray(rows))
  q_ref, s_ref = quantize_activations_reference(src, block=block, pad_rows=16)
  chex.assert_shape((q_ref, s_ref), ((16, k), (16, -(-k // 128)) if block else (16,)))
  np.testing.assert_array_equal(q[:5], q5)
  np.testing.assert_array_equal(s[:5], s5)
  np.testing.assert_array_equal(q[5:], 0.0)
  np.testing.assert_array_equal(s[5:], 1.0)
  np.testing.assert_array_equal(np.asarray(q_ref[5:].astype(jnp.float32)), 0.0)
  np.testing.assert_array_equal(np.asarray(s_ref[5:]), 1.0)


def test_pad_rows_flattens_and_checks():
  """pad_rows flattens the leading axes into rows and appends zero rows; fewer rows than
  the activation's is an error naming both."""
  x = jnp.asarray(_x((6, 256))).reshape(2, 3, 256).astype(jnp.bfloat16)
  q, s = quantize_activations(RMSNormOf(x, jnp.ones(256)), pad_rows=8)
  chex.assert_shape((q, s), ((8, 256), (8,)))
  q6, s6 = quantize_activations(RMSNormOf(x, jnp.ones(256)))
  chex.assert_trees_all_equal((q[:6], s[:6]), (q6.reshape(6, 256), s6.reshape(6)))
  with pytest.raises(ValueError, match="pad_rows=5 is fewer than the activation's 6 rows"):
    quantize_activations(x, pad_rows=5)


def test_entry_point_errors():
  x = jnp.ones((4, 256), jnp.bfloat16)
  with pytest.raises(ValueError, match=r"RMSNorm weight shape \(128,\) != \(256,\)"):
    quantize_activations(RMSNormOf(x, jnp.ones(128)))
  with pytest.raises(ValueError, match="gate_up last axis 255 is odd"):
    quantize_activations(SwiGLUOf(x[:, :255]))
  with pytest.raises(ValueError, match=r"2-D source and 1-D rows, got shapes \(2, 2, 256\)"):
    quantize_activations(RowsOf(x.reshape(2, 2, 256), jnp.zeros(3, jnp.int32)))
  with pytest.raises(ValueError, match=r"1-D rows, got shapes \(4, 256\) and \(3, 1\)"):
    quantize_activations(RowsOf(x, jnp.zeros((3, 1), jnp.int32)))
  with pytest.raises(ValueError, match="impl='cuda'"):
    quantize_activations(x, impl="cuda")


def test_entry_point_keeps_leading_axes():
  x = jnp.asarray(_x((6, 256))).reshape(2, 3, 256).astype(jnp.bfloat16)
  q, s = quantize_activations(x)
  chex.assert_shape((q, s), ((2, 3, 256), (2, 3)))
  q, s = quantize_activations(SwiGLUOf(x), block=128)
  chex.assert_shape((q, s), ((2, 3, 128), (2, 3, 1)))


@pytest.mark.gpu
@pytest.mark.parametrize("kind,k", [("rmsnorm", 1408), ("rmsnorm", 1792), ("plain", 1408),
                                    ("swiglu", 5632), ("swiglu", 1408)])
@pytest.mark.parametrize("block", [None, 128])
def test_triton_kernel_gpu(kind, k, block):
  x = jnp.asarray(_x((16384, 2 * k if kind == "swiglu" else k))).astype(jnp.bfloat16)
  x = x.at[7, 3].set(jnp.nan)  # NaN makes its group's scale NaN, never hidden
  w = jnp.asarray(rng.uniform(0.5, 2.0, k), jnp.float32)
  src = _source(kind, x, w)
  rows = jnp.asarray(rng.integers(0, x.shape[0], 3 * x.shape[0]), jnp.int32)
  for r in (None, rows):
    if r is not None:
      r = r.at[0].set(7)  # the NaN row
    src_r = src if r is None else RowsOf(src, r)
    q, s = jax.jit(lambda a: quantize_activations(a, block=block, impl="triton"))(src_r)
    q_ref, s_ref = quantize_activations_reference(src_r, block=block)
    # Plain: the same float operations, equal scales. RMSNorm / SwiGLU: the GPU's
    # approximate rsqrt / exp move a scale by a few ulps. NaN groups: scale NaN, all NaN.
    np.testing.assert_allclose(np.asarray(s), np.asarray(s_ref),
                               rtol=0 if kind == "plain" else 1e-6)
    qf, qr = (np.asarray(a.astype(jnp.float32)) for a in (q, q_ref))
    ok = ~np.isnan(qr)
    assert ok.mean() < 1 and np.array_equal(np.isnan(qf), ~ok)
    # Plain is bit-exact but for a few FP8 subnormals (2 of 23M measured at 1408, one step
    # apart), likely XLA's GPU conversion to FP8 rounding differently; CPU tests (exact
    # round to nearest even on both sides) require bit-exact plain values.
    assert np.mean(qf[ok] != qr[ok]) < (1e-6 if kind == "plain" else 0.002)
    assert np.all(np.abs(qf[ok] - qr[ok]) <= np.abs(qr[ok]) / 8 + 2.0 ** -9)


@pytest.mark.gpu
@pytest.mark.parametrize("block", [None, 128])
def test_triton_kernel_pads_rows_gpu(block):
  """32 gathered RMSNorm rows written as a 64-row GEMM tile: the 32 as unpadded, the rest
  value 0, scale 1."""
  x = jnp.asarray(_x((100, 1408))).astype(jnp.bfloat16)
  src = RowsOf(RMSNormOf(x, jnp.asarray(rng.uniform(0.5, 2.0, 1408), jnp.float32)),
               jnp.asarray(rng.integers(0, 100, 32), jnp.int32))
  run = jax.jit(lambda a, r: quantize_activations(a, block=block, pad_rows=r, impl="triton"),
                static_argnums=1)
  (q, s), (q32, s32) = run(src, 64), run(src, None)
  chex.assert_trees_all_equal((q[:32], s[:32]), (q32, s32))
  np.testing.assert_array_equal(np.asarray(q[32:].astype(jnp.float32)), 0.0)
  np.testing.assert_array_equal(np.asarray(s[32:]), 1.0)


def _awkward(rows, k):
  """Rows at the edges of float32 division: a subnormal scale (the kernel's div_rn
  fallback), one near the fallback's 2^-90 threshold, a huge one, quotients that underflow
  to signed zeros next to large values, subnormal inputs, groups of subnormals whose scale
  underflows to zero (scale 1), an inf (its group NaN); rows 9 on hold values within 2
  ulps of FP8 rounding midpoints times their scale, where a quotient off by an ulp rounds
  the other way (5% of them for x * fl32(1 / s))."""
  x = _x((rows, k))
  amax = rng.uniform(0.5, 8.0, (rows, 1)).astype(np.float32)
  s = amax * fp8_spec.INV_MAX
  grid = fp8_spec.E4M3_GRID.astype(np.float32)
  mids = (grid[1:] + grid[:-1]) / 2  # exact in float32
  m = rng.choice(mids, (rows, k)) * rng.choice([-1.0, 1.0], (rows, k))
  near = (m * s).astype(np.float32).view(np.int32) + rng.integers(-2, 3, (rows, k), np.int32)
  x[9:] = near.view(np.float32)[9:]
  x[9:, ::128] = amax[9:]  # every 128-block's largest magnitude: the scale is s
  x[1, ::7] = np.where(np.arange(0, k, 7) % 2, 3e-45, -1e-44)  # amax / 448 underflows
  x[2] *= 1e-38
  x[3] *= 1e-27
  x[4] *= 1e-25
  x[5] *= 1e30
  x[6, ::2] = -1e-30
  x[7, ::3] = -3e-42
  x[8, 5] = np.inf
  return x


def _spec_bytes(x: np.ndarray, block: int | None, flush: bool = False):
  """(FP8 codes, scales) of the specification."""
  values, scales = _spec(x, block, flush)
  return fp8_spec.fp8_bytes(values), scales


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("block", [None, 128])
def test_reference_is_bit_exact_at_rounding_ties(block, jit):
  """quantize_rows / quantize_blocks against the specification, signed zeros included,
  at FP8 rounding midpoints (where x * fl32(1 / s), XLA's CPU rewrite of the division,
  moves 5% of the values) and the awkward magnitudes above, subnormals flushed on the
  CPU."""
  x = _awkward(64, 1000)
  f = (lambda a: quantize_rows(a)) if block is None else (lambda a: quantize_blocks(a, 1, block))
  q, s = (jax.jit(f) if jit else f)(jnp.asarray(x))
  q_ref, s_ref = _spec_bytes(x, block, flush=XLA_FLUSHES)
  np.testing.assert_array_equal(np.asarray(s), s_ref)
  np.testing.assert_array_equal(fp8_spec.fp8_bytes(np.asarray(q)), q_ref)


@pytest.mark.parametrize("block_rows,block_cols", [(1, None), (1, 128), (128, 128), (8, 32)])
def test_dequantize_is_value_times_scale(block_rows, block_cols):
  """dequantize_rows / dequantize_blocks: each element's FP8 value times its own group's
  scale (exact in float32), NaN groups NaN; a partial edge block keeps its own scale."""
  x = _specials("plain")[:, :290]
  if block_cols is None:
    q, s = quantize_rows(jnp.asarray(x))
    got = dequantize_rows(q, s)
  else:
    q, s = quantize_blocks(jnp.asarray(x), block_rows, block_cols)
    got = dequantize_blocks(q, s, block_rows, block_cols)
  values, scales = fp8_spec.quantize(x, block_rows, block_cols, flush=XLA_FLUSHES)
  per_element = (scales[:, None] if block_cols is None else
                 fp8_spec.expand(scales, *x.shape, block_rows, block_cols))
  np.testing.assert_array_equal(np.asarray(got), (values * per_element).astype(np.float32))


@pytest.mark.parametrize("block", [None, 128])
def test_triton_kernel_division_is_exact_interpret(block):
  """Bit for bit, signed zeros included, against the specification's float32 division at
  awkward magnitudes."""
  mod = interpreted("onerec_kernels.quantize.triton_gpu")
  x = _awkward(64, 1000)
  q, s = _run_kernel(mod, "plain", x, None, None, block, fp8=True)
  q_ref, s_ref = _spec_bytes(x, block)
  np.testing.assert_array_equal(s, s_ref)
  np.testing.assert_array_equal(fp8_spec.fp8_bytes(q), q_ref)


def test_exact_fma_rounds_once():
  """The interpreter patch's fma against exact rational arithmetic."""
  from fractions import Fraction
  from triton_interpret import exact_fma
  x, y, z = (rng.standard_normal(2000).astype(np.float32) for _ in range(3))
  z[:1000] = -(x[:1000] * y[:1000])  # cancellation: the exact residual of a product
  got = exact_fma(x, y, z)
  for a, b, c, g in zip(x, y, z, got):
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    lo = np.float32(float(exact))  # float64 of the fraction, then float32: bracket it
    cands = [np.nextafter(lo, np.float32(-np.inf)), lo, np.nextafter(lo, np.float32(np.inf))]
    best = min(cands, key=lambda v: (abs(Fraction(float(v)) - exact),
                                     int(np.float32(v).view(np.int32)) & 1))
    assert g == best, (a, b, c, g, best)


@pytest.mark.gpu
@pytest.mark.parametrize("block", [None, 128])
def test_triton_kernel_division_is_exact_gpu(block):
  """On the GPU, which may flush subnormal operands: bit for bit against the
  specification."""
  x = _awkward(64, 1408)
  q, s = jax.jit(lambda a: quantize_activations(a, block=block, impl="triton"))(
      jnp.asarray(x))
  q_ref, s_ref = _spec_bytes(x, block)
  np.testing.assert_array_equal(np.asarray(s), s_ref)
  np.testing.assert_array_equal(fp8_spec.fp8_bytes(np.asarray(q)), q_ref)


def _specials(kind):
  """Rows [6, 300] with NaN and Inf: row 1 a NaN, row 2 +inf, row 3 -inf in its second
  128-block only, row 4 NaN and inf in one block, row 5 all NaN; rows 0 and 1 hold values
  beyond 448 and the zero row of _x is row 1 (then NaN)."""
  x = _x((6, 2 * 300 if kind == "swiglu" else 300))
  x[1, 17] = np.nan
  x[2, 3] = np.inf
  x[3, 130] = -np.inf
  x[4, 260], x[4, 299] = np.nan, np.inf
  x[5] = np.nan
  return x


@pytest.mark.parametrize("block", [None, 128])
def test_reference_nan_and_inf_groups(block):
  """A group holding a NaN or an Inf gets scale NaN and quantizes to NaN throughout; the
  other groups are untouched (the specification); a matmul row reading it is NaN."""
  from onerec_kernels.fp8_linear import fp8_linear_reference
  x = _specials("plain")
  q, s = quantize_activations_reference(jnp.asarray(x), block=block)
  q_ref, s_ref = _spec_bytes(x, block, flush=XLA_FLUSHES)
  np.testing.assert_array_equal(np.asarray(s), s_ref)
  np.testing.assert_array_equal(fp8_spec.fp8_bytes(np.asarray(q)), q_ref)
  bad = ~np.isfinite(x) if block is None else ~np.isfinite(
      fp8_spec.group_amax(x, 1, block))  # [R, K] or [R, Kb]
  groups = bad.any(axis=1) if block is None else bad
  assert np.all(np.isnan(s_ref) == groups) and groups.any() and not groups.all()
  if block is None:  # per-token scales feed the FP8 linear: NaN rows stay NaN
    w_q, w_s = quantize_rows(jnp.asarray(rng.standard_normal((8, 300)), jnp.float32))
    y = np.asarray(fp8_linear_reference(q, s, w_q, w_s, out_dtype=jnp.float32))
    assert np.all(np.isnan(y[groups])) and np.all(np.isfinite(y[~groups]))


@pytest.mark.parametrize("block_rows,block_cols", [(1, None), (1, 128), (128, 128)])
def test_reference_finds_every_nan_group(block_rows, block_cols):
  """Scattered NaNs in a weight-sized tensor: each group holding one gets scale NaN, no
  other does (XLA's CPU reduce-max drops NaNs at this shape, rows and blocks alike)."""
  x = rng.standard_normal((345, 1325)).astype(np.float32)
  x.reshape(-1)[rng.choice(x.size, 40, replace=False)] = np.nan
  _, s = (quantize_rows(jnp.asarray(x)) if block_cols is None
          else quantize_blocks(jnp.asarray(x), block_rows, block_cols))
  want = np.isnan(fp8_spec.group_amax(x, block_rows, block_cols or x.shape[1]))
  np.testing.assert_array_equal(np.isnan(np.asarray(s)), want.reshape(np.shape(s)))
  assert want.any() and not want.all()


@pytest.mark.parametrize("kind", ["plain", "rmsnorm", "swiglu"])
@pytest.mark.parametrize("block", [None, 128])
def test_triton_kernel_nan_and_inf_interpret(kind, block):
  """The kernel follows the reference's NaN rule: equal scales (NaN where the reference
  has NaN) and NaN exactly where the reference has NaN."""
  mod = interpreted("onerec_kernels.quantize.triton_gpu")
  x = _specials(kind)
  k = 300
  w = rng.uniform(0.5, 2.0, k).astype(np.float32) if kind == "rmsnorm" else None
  q, s = _run_kernel(mod, kind, x, w, None, block)
  q_ref, s_ref = quantize_activations_reference(_source(kind, x, w), block=block)
  np.testing.assert_allclose(s, np.asarray(s_ref), rtol=3e-7)  # NaN equals NaN here
  q_ref = np.asarray(q_ref.astype(jnp.float32))
  np.testing.assert_array_equal(np.isnan(q), np.isnan(q_ref))
  assert np.isnan(q).any() and not np.isnan(q).all()


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["plain", "rmsnorm", "swiglu"])
@pytest.mark.parametrize("block", [None, 128])
def test_triton_kernel_nan_and_inf_gpu(kind, block):
  """The NaN rule on the GPU (whose fmax would drop a NaN): plain is bit-exact against the
  specification; every kind has NaN exactly where the reference has."""
  x = _specials(kind)
  w = jnp.asarray(rng.uniform(0.5, 2.0, 300), jnp.float32)
  src = _source(kind, x, w)
  q, s = jax.jit(lambda a: quantize_activations(a, block=block, impl="triton"))(src)
  q_ref, s_ref = quantize_activations_reference(src, block=block)
  np.testing.assert_array_equal(np.isnan(np.asarray(s)), np.isnan(np.asarray(s_ref)))
  qf, qr = (np.asarray(a.astype(jnp.float32)) for a in (q, q_ref))
  np.testing.assert_array_equal(np.isnan(qf), np.isnan(qr))
  if kind == "plain":
    codes, scales = _spec_bytes(x, block)
    np.testing.assert_array_equal(np.asarray(s), scales)
    np.testing.assert_array_equal(fp8_spec.fp8_bytes(np.asarray(q)), codes)


def test_kernel_config_default_and_launch():
  """About 8192 source elements a program; a program's rows capped by the largest power of
  two dividing the row count (no partial program); rows a power of two."""
  mod = interpreted("onerec_kernels.quantize.triton_gpu")
  assert mod.default_config(1408) == mod.Config(rows=4, num_warps=4)  # 11 blocks -> 16
  assert mod.default_config(5632) == mod.Config(rows=1, num_warps=4)
  assert mod.default_config(16384) == mod.Config(rows=1, num_warps=8)
  grid, warps, meta = mod.launch_meta((96, 1408), 96, k=1408, mode=0, eps=0.0, gather=False,
                                      per_block=True)
  assert (grid, warps, meta["ROWS"], meta["NB"], meta["KB"]) == ((24,), 4, 4, 16, 11)
  assert mod.launch_meta((6, 1408), 6, k=1408, mode=0, eps=0.0, gather=False,
                         per_block=False)[0] == (3,)  # 2 rows a program
  assert mod.launch_meta((7, 300), 7, k=300, mode=0, eps=0.0, gather=False,
                         per_block=False)[2]["ROWS"] == 1
  with pytest.raises(ValueError, match="power of two"):
    mod.Config(rows=3)
