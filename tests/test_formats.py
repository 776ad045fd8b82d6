"""The quantization formats below FP8 (onerec_kernels.quantize.formats) against independent
implementations: numpy arithmetic with the specifications' constants written out here,
then ml_dtypes' and torch's casts where they have the format (torch has no int4 or e2m1
cast: there an explicit nearest-even search over the e2m1 grid stands in). Every
comparison is bit for bit; the error bounds are derived from the formats' spacing."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from onerec_kernels.quantize.formats import (E2M1, E4M3, E5M2, INT4, INT8, Quantizer,
                                             pack_nibbles, unpack_nibbles)

INT8_MAX, INT4_MAX = 127, 7  # symmetric integer grids (-128 and -8 unused)
E4M3_MAX, E5M2_MAX, E2M1_MAX = 448.0, 57344.0, 6.0
E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
EMAX = {"e4m3": 8, "e2m1": 2}  # OCP MX v1.0 table 1: exponent of the largest normal
E8M0_RANGE = (-127, 127)


def _matrix(rng, m=12, k=200, dtype=np.float32):
  """Rows of very different magnitudes and in-row ranges, zeros, an all-zero row, exact
  powers of two, and K = 200 (partial groups of 16, 32 and 128)."""
  x = rng.standard_normal((m, k)) * 10.0 ** rng.uniform(-3, 3, (m, 1))
  x[2] *= np.exp(rng.uniform(-12, 0, k))
  x[4] = 0.0
  x[6, ::3] = 0.0
  x[8] = rng.choice([-1.0, 1.0], k) * 2.0 ** rng.integers(-12, 9, k)
  x[10, :64] = 0.0  # an all-zero 32-block and a zero start of a 128-group
  return x.astype(dtype)


def _amax_groups(x, group):
  """|x| maxima per row (group None) or per 1 x group block, in float32 numpy."""
  a = np.abs(x.astype(np.float32))
  if group is None:
    return a.max(-1)
  k = x.shape[-1]
  g = -(-k // group)
  a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, g * group - k)])
  return a.reshape(*a.shape[:-1], g, group).max(-1)


def _expand(scale, group, k):
  if np.ndim(scale) == 0:
    return scale
  if group is None:
    return scale[..., None]
  return np.repeat(scale, group, axis=-1)[..., :k]


def _fp32_scale(amax, largest):
  amax = amax.astype(np.float32)
  return np.where(amax > 0, amax * np.float32(1 / largest), np.float32(1)).astype(np.float32)


def _e8m0_scale(amax, emax):
  """2^(floor(log2 amax) - emax) by float64 logarithms, clamped; zero amax gives 1."""
  with np.errstate(divide="ignore"):
    e = np.floor(np.log2(amax.astype(np.float64))) - emax
  e = np.where(amax > 0, np.clip(e, *E8M0_RANGE), 0)
  return np.ldexp(1.0, e.astype(np.int64)).astype(np.float32)


def _scaled(x, scale, group, largest):
  y = x.astype(np.float32) / _expand(scale, group, x.shape[-1])
  return np.clip(y, -largest, largest).astype(np.float32)


def _e2m1_nearest_even(y):
  """Round to the e2m1 grid by search: the nearest grid point, ties to the even code
  (codes 0..7 are the grid's indices: even index = even mantissa bit)."""
  a = np.abs(y)[..., None]
  d = np.abs(a - E2M1_GRID)
  best = d.min(-1, keepdims=True)
  idx = np.where(d == best, np.arange(8), 99)
  pick = np.where((idx % 2 == 0) & (idx < 99), idx, 99).min(-1)
  pick = np.where(pick == 99, idx.min(-1), pick)
  return np.sign(y) * E2M1_GRID[pick]


def _bits(a):
  a = np.asarray(a)
  return a.view(np.uint8) if a.dtype.itemsize == 1 else a


@pytest.mark.parametrize("jit", [False, True])
def test_int8_per_row(jit):
  x = _matrix(np.random.default_rng(0))
  q = Quantizer(INT8)
  value, scale = (jax.jit(q.quantize) if jit else q.quantize)(jnp.asarray(x))
  want_scale = _fp32_scale(_amax_groups(x, None), INT8_MAX)
  np.testing.assert_array_equal(np.asarray(scale), want_scale)
  y = _scaled(x, want_scale, None, INT8_MAX)
  np.testing.assert_array_equal(np.asarray(value), np.rint(y).astype(np.int8))
  th = torch.round(torch.clamp(torch.from_numpy(x) / torch.from_numpy(want_scale)[:, None],
                               -INT8_MAX, INT8_MAX)).to(torch.int8).numpy()
  np.testing.assert_array_equal(np.asarray(value), th)
  assert value.dtype == jnp.int8 and np.abs(np.asarray(value)).max() == INT8_MAX


@pytest.mark.parametrize("group", [128, None])
def test_int4_groups(group):
  x = _matrix(np.random.default_rng(1))
  q = Quantizer(INT4, group)
  value, scale = q.quantize(jnp.asarray(x))
  want_scale = _fp32_scale(_amax_groups(x, group), INT4_MAX)
  np.testing.assert_array_equal(np.asarray(scale), want_scale)
  want = np.rint(_scaled(x, want_scale, group, INT4_MAX))
  assert value.dtype == jnp.int4
  np.testing.assert_array_equal(np.asarray(value).astype(np.int8), want.astype(np.int8))
  np.testing.assert_array_equal(np.asarray(value).astype(np.int8),
                                want.astype(ml_dtypes.int4).astype(np.int8))
  assert np.asarray(value).astype(np.int8).min() >= -INT4_MAX


def test_e5m2_per_row():
  x = _matrix(np.random.default_rng(2))
  value, scale = Quantizer(E5M2).quantize(jnp.asarray(x))
  want_scale = _fp32_scale(_amax_groups(x, None), E5M2_MAX)
  np.testing.assert_array_equal(np.asarray(scale), want_scale)
  y = _scaled(x, want_scale, None, E5M2_MAX)
  np.testing.assert_array_equal(_bits(value), y.astype(ml_dtypes.float8_e5m2).view(np.uint8))
  np.testing.assert_array_equal(
      _bits(value), torch.from_numpy(y).to(torch.float8_e5m2).view(torch.uint8).numpy())


@pytest.mark.parametrize("fmt", [E4M3, E2M1], ids=lambda f: f.name)
def test_mx_blocks_of_32(fmt):
  """MXFP8 (e4m3) and MXFP4 (e2m1): 1 x 32 blocks, E8M0 scales."""
  rng = np.random.default_rng(3)
  x = np.concatenate([_matrix(rng), 1e-30 * _matrix(rng)[:2]])  # tiny: scale 2^-108
  q = Quantizer(fmt, 32, power_of_two=True)
  value, scale = q.quantize(jnp.asarray(x))
  want_scale = _e8m0_scale(_amax_groups(x, 32), EMAX[fmt.name])
  assert scale.dtype == jnp.float8_e8m0fnu and scale.shape == (14, 7)
  np.testing.assert_array_equal(np.asarray(scale).astype(np.float32), want_scale)
  np.testing.assert_array_equal(_bits(scale),
                                want_scale.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8))
  np.testing.assert_array_equal(_bits(scale), torch.from_numpy(want_scale).to(
      torch.float8_e8m0fnu).view(torch.uint8).numpy())
  largest = {"e4m3": E4M3_MAX, "e2m1": E2M1_MAX}[fmt.name]
  y = _scaled(x, want_scale, 32, largest)
  if fmt is E4M3:
    np.testing.assert_array_equal(_bits(value), y.astype(ml_dtypes.float8_e4m3fn).view(np.uint8))
    np.testing.assert_array_equal(_bits(value), torch.from_numpy(y).to(
        torch.float8_e4m3fn).view(torch.uint8).numpy())
  else:
    got = np.asarray(value).astype(np.float32)
    np.testing.assert_array_equal(got, y.astype(ml_dtypes.float4_e2m1fn).astype(np.float32))
    np.testing.assert_array_equal(got, _e2m1_nearest_even(y))


def test_e2m1_grid_and_ties():
  """Every value of the grid is exact, midpoints go to the even code, beyond 6 saturates."""
  mid = (E2M1_GRID[1:] + E2M1_GRID[:-1]) / 2  # 0.25 0.75 1.25 1.75 2.5 3.5 5
  want_mid = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]  # the even neighbour of each
  y = np.concatenate([E2M1_GRID, mid, [6.5, 100.0]])
  y = np.concatenate([y, -y]).astype(np.float32)
  got = np.asarray(E2M1.cast(jnp.asarray(y), jnp.float32(1.0))).astype(np.float32)
  want = np.concatenate([E2M1_GRID, want_mid, [6.0, 6.0]])
  np.testing.assert_array_equal(got, np.concatenate([want, -want]))


@pytest.mark.parametrize("fmt", [INT8, INT4], ids=lambda f: f.name)
def test_integer_ties_round_to_even_and_saturate(fmt):
  y = np.array([0.5, 1.5, 2.5, 3.5, 6.5, 7.4, 7.6, 126.5, 300.0], np.float32)
  want = np.minimum(np.array([0, 2, 2, 4, 6, 7, 8, 126, 300]), fmt.largest)
  got = np.asarray(fmt.cast(jnp.asarray(np.concatenate([y, -y])), jnp.float32(1.0)))
  np.testing.assert_array_equal(got.astype(np.int32), np.concatenate([want, -want]))


def test_constants_of_the_formats():
  assert [f.largest for f in (INT8, INT4, E4M3, E5M2, E2M1)] == [
      INT8_MAX, INT4_MAX, E4M3_MAX, E5M2_MAX, E2M1_MAX]
  assert (E4M3.emax, E2M1.emax, E5M2.emax) == (8, 2, 15)
  assert [f.bits for f in (INT8, INT4, E4M3, E5M2, E2M1)] == [8, 4, 8, 8, 4]
  assert Quantizer(INT4, 128).bits_per_element(1024) == 4 + 32 / 128
  assert Quantizer(E2M1, 32, power_of_two=True).bits_per_element(1024) == 4.25
  assert Quantizer(E4M3).bits_per_element(256) == 8 + 32 / 256
  assert Quantizer(INT4, tensor=True).bits_per_element(256, rows=512) == 4 + 32 / 256 / 512
  with pytest.raises(ValueError, match="per-tensor quantizer has no groups"):
    Quantizer(INT4, 128, tensor=True)


def test_per_tensor_uses_one_scale():
  x = jnp.array([[1000.0, 1.0], [0.001, -2.0]])
  value, scale = Quantizer(INT4, tensor=True).quantize(x)
  assert scale.shape == () and float(scale) == np.float32(1000.0) * np.float32(1 / 7)
  np.testing.assert_array_equal(np.asarray(value).astype(np.int8), [[7, 0], [0, 0]])


# Round-trip error bounds, from the grids' spacing. Integers: |x_hat - x| <= s / 2 (plus
# the FP32 division, 2^-24 relative). Floats with m mantissa bits: 2^-(m+1) |x| in the
# normal range plus half the subnormal spacing (times s) below it. E8M0 scales can put a
# block's largest elements above the format's largest value (amax / s in
# [2^emax, 2^(emax+1))): those saturate, which adds |x| - largest * s.
BOUNDS = {  # format: (relative half-ulp, half the subnormal spacing)
    "e4m3": (2.0**-4, 2.0**-10), "e5m2": (2.0**-3, 2.0**-17), "e2m1": (2.0**-2, 0.25)}


@pytest.mark.parametrize("q", [
    Quantizer(INT8), Quantizer(INT4, 128), Quantizer(INT4, tensor=True), Quantizer(E5M2),
    Quantizer(E4M3, 32, power_of_two=True), Quantizer(E2M1, 32, power_of_two=True),
    Quantizer(E2M1, 16)], ids=lambda q: q.name)
def test_round_trip_within_the_derived_bound(q):
  x = _matrix(np.random.default_rng(4)).astype(np.float64)
  value, scale = q.quantize(jnp.asarray(x, jnp.float32))
  xq = np.asarray(q.dequantize(value, scale), np.float64)
  s = _expand(np.asarray(scale).astype(np.float64), q.group, x.shape[-1])
  x32 = x.astype(np.float32).astype(np.float64)
  if q.format.integer:
    bound = s / 2 + 2.0**-23 * np.abs(x32)
  else:
    rel, sub = BOUNDS[q.format.name]
    bound = (rel + 2.0**-22) * np.abs(x32) + sub * s
    bound = np.maximum(bound, np.abs(x32) - q.format.largest * s)
  assert np.all(np.abs(xq - x32) <= bound)
  assert np.all(xq[4] == 0)  # the all-zero row


def _nibble_values(codes, fmt):
  """The values of 4-bit codes, from the formats' definitions: int4 two's complement,
  e2m1 sign bit 3 and magnitude E2M1_GRID[code & 7]."""
  if fmt is INT4:
    return np.where(codes >= 8, codes.astype(np.int8) - 16, codes).astype(ml_dtypes.int4)
  sign = np.where(codes & 8, -1.0, 1.0)
  return (sign * E2M1_GRID[codes & 7]).astype(ml_dtypes.float4_e2m1fn)


@pytest.mark.parametrize("k", [1, 6, 7, 33])
@pytest.mark.parametrize("fmt", [INT4, E2M1], ids=lambda f: f.name)
def test_packed_layout_against_numpy_bit_ops(fmt, k):
  """Every code (-8..7; e2m1's -0 too): byte j holds element 2j in its low nibble and
  2j + 1 in its high one, an odd K's last high nibble 0; unpacking gives the values back;
  the Quantizer packs its 4-bit formats only."""
  rng = np.random.default_rng(11)
  codes = rng.integers(0, 16, (3, 2, k)).astype(np.uint8)
  codes[0, 0, :min(k, 16)] = np.arange(min(k, 16))
  padded = np.concatenate([codes, np.zeros((3, 2, k % 2), np.uint8)], axis=-1)
  want = padded[..., 0::2] | (padded[..., 1::2] << 4)
  values = jnp.asarray(_nibble_values(codes, fmt))
  packed = pack_nibbles(values)
  assert packed.dtype == jnp.uint8 and packed.shape == (3, 2, (k + 1) // 2)
  np.testing.assert_array_equal(np.asarray(packed), want)
  back = np.asarray(unpack_nibbles(jnp.asarray(want), fmt.dtype, k))
  np.testing.assert_array_equal(back.view(np.uint8) & 0xF if fmt is E2M1 else
                                back.astype(np.int8), codes if fmt is E2M1 else
                                np.asarray(values).astype(np.int8))
  q = Quantizer(fmt, 32)
  np.testing.assert_array_equal(np.asarray(q.unpack(q.pack(values), k)).astype(np.float32),
                                np.asarray(values).astype(np.float32))
  assert not Quantizer(E4M3).packed and Quantizer(E4M3).pack(packed) is packed


def test_packing_refuses_wrong_dtypes_and_shapes():
  with pytest.raises(ValueError, match="4-bit values .* got int8"):
    pack_nibbles(jnp.zeros((2, 4), jnp.int8))
  with pytest.raises(ValueError, match=r"K=7 are uint8 \[..., 4\], got uint8 \(2, 3\)"):
    unpack_nibbles(jnp.zeros((2, 3), jnp.uint8), jnp.int4, 7)
  with pytest.raises(ValueError, match=r"K=8 have last axis 8, got shape \(2, 4\)"):
    Quantizer(E4M3).unpack(jnp.zeros((2, 4), jnp.float8_e4m3fn), 8)
