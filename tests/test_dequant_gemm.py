"""The 4-bit-weight GEMMs (onerec_kernels.dequant_gemm): the Triton kernel that
dequantizes packed INT4 / MXFP4 weights inside its main loop against the reference, in
Triton's CPU interpreter at awkward shapes (ragged and empty groups, rows past the
groups, K off the scale group and odd, N off the block, one row, every nibble, E8M0
extremes, NaN and inf activations), the packed dequantization against ml_dtypes, the
registry's fallback for the formats the kernel does not take; on the GPU (marked) at
moe-4b's routed-expert shapes through jax-triton.

Error bound (FP32 output), first order in u = 2^-24, against mag = sum_k |a_k| |w_k| of
the reference's operands: the kernel's products of FP8 (or 16-bit) activations and 4-bit
values are exact in FP32; it sums a group's G of them (G - 1 roundings), scales the
partial (1), sums the KG = ceil(K / G) partials (KG - 1) and applies the token scale (1):
(G + KG) u mag. The reference rounds a_k = q_k s_x, w_k = v_k s_g and their product (3)
and sums K terms (K - 1): (K + 2) u mag. So |kernel - reference| <= (K + G + KG + 2) u mag,
times 1.001 for the higher-order terms and mag's own rounding, plus (K + G + KG + 2) *
2^-150 for roundings in the subnormal range (E8M0 scales near 2^-127). On the GPU each
group's tl.dot runs ceil(G / 32) tensor-core steps, which keep about 14 bits:
gemm_mgpu.testing.STEP_ERR of mag a step, plus one.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import onerec_kernels.dequant_gemm as dequant_gemm_op
from onerec_kernels import backend
from onerec_kernels.dequant_gemm import dequant_grouped_gemm_reference, triton_gpu
from onerec_kernels.gemm_mgpu import testing
from onerec_kernels.quantize import quantize_activations
from onerec_kernels.quantize.activations import RMSNormOf
from onerec_jax.quant.schemes import SCHEMES

U = 2.0**-24
W4 = ["int4_w4a8", "mxfp4_w4a8", "int4_w4a16", "mxfp4_w4a16"]


def _quantizers(scheme):
  _, op = SCHEMES[scheme].ops[3]
  return op.keywords["weight"], op.keywords["activation"]


def _operands(seed, m, k, n, e, dtype=jnp.bfloat16):
  kx, kw = jax.random.split(jax.random.key(seed))
  x = (jax.random.normal(kx, (m, k)) * 3.0).astype(dtype)
  w = jax.random.normal(kw, (e, n, k)) * 0.05
  return x, w


def _every_code(shape):
  """uint8 4-bit codes of `shape` in which every code 0..15 lands on even and on odd
  positions of the last axis (so in low and in high nibbles once packed)."""
  idx = np.arange(np.prod(shape))
  codes = ((idx * 7 + idx // 2) % 16).astype(np.uint8).reshape(shape)
  assert all(len(np.unique(codes[..., j::2])) == 16 for j in (0, 1))
  return codes


def _dense_operands(x, w_value, w_scale, weight, activation):
  """(a [M, K], w [E, N, K]) FP32 as the reference sees them."""
  a = dequant_gemm_op.activation_fp32(x, activation)
  return a, weight.dequantize(weight.unpack(w_value, a.shape[-1]), w_scale)


def _bound(a, w, sizes, group, gpu=False):
  """[M, N] bound of the module docstring for a [M, K] and w [E, N, K] (FP32) in groups
  of sizes [E] rows; mag in FP32 (its own relative error, K u, is within the 0.001)."""
  k = a.shape[-1]
  mag = jax.lax.ragged_dot(jnp.abs(a), jnp.abs(w).swapaxes(1, 2), jnp.asarray(sizes, jnp.int32),
                           precision=jax.lax.Precision.HIGHEST)
  terms = k + group + -(-k // group) + 2
  rel = terms * U * 1.001 + ((-(-group // 32) + 1) * testing.STEP_ERR if gpu else 0.0)
  return rel * np.asarray(mag, np.float64) + terms * 2.0**-150


def _check(got, want, bound):
  """NaN and inf where the reference has them; elsewhere within the bound."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
  np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
  fin = np.isfinite(want)
  err = np.abs(got - want)[fin]
  assert np.all(err <= bound[fin]), float(np.max(err / bound[fin]))


@pytest.fixture
def interpret(monkeypatch):
  from triton_interpret import LAUNCHES, triton_kernels_on_cpu
  triton_kernels_on_cpu(monkeypatch)
  return LAUNCHES


def _grouped(scheme, x, w_value, w_scale, sizes, impl, out_dtype=jnp.float32):
  weight, activation = _quantizers(scheme)
  return dequant_gemm_op.dequant_grouped_gemm(
      x, w_value, w_scale, jnp.asarray(sizes, jnp.int32), weight=weight,
      activation=activation, out_dtype=out_dtype, impl=impl)


@pytest.mark.parametrize("scheme", W4)
@pytest.mark.parametrize("m,k,n,sizes", [
    (23, 200, 72, [7, 0, 9]),  # ragged, an empty expert, 7 rows past the groups,
                               # K off the 128 group, N off the block
    (1, 201, 40, [1]),  # one row, odd K
    (40, 256, 130, [0, 33, 0]),  # empty first and last experts, N past one block
], ids=["ragged", "one-row-odd-k", "empty-ends"])
def test_kernel_matches_reference_interpret(interpret, scheme, m, k, n, sizes):
  weight, activation = _quantizers(scheme)
  x, w = _operands(m + k + n, m, k, n, len(sizes))
  w_value, w_scale = SCHEMES[scheme].quantize(w)  # packed [E, N, ceil(K/2)]
  got = _grouped(scheme, x, w_value, w_scale, sizes, "triton")
  assert {name for name, _ in interpret} >= {"_dequant_gemm_kernel"}
  want = _grouped(scheme, x, w_value, w_scale, sizes, "reference")
  a, wd = _dense_operands(x, w_value, w_scale, weight, activation)
  _check(got, want, _bound(a, wd, sizes, weight.group))
  assert np.all(np.asarray(got)[sum(sizes):] == 0)


@pytest.mark.parametrize("scheme", ["int4_w4a8", "mxfp4_w4a16"])
def test_tilings_and_bf16_output_interpret(interpret, scheme):
  """Other tilings (two N blocks of 64, 32-row token tiles over a group of 40 rows, one
  stage) launched directly, and a bf16 output: within the bound plus a bf16 rounding of
  each side (2^-8 |reference| each)."""
  weight, activation = _quantizers(scheme)
  m, k, n, sizes = 50, 160, 100, [40, 3]
  x, w = _operands(3, m, k, n, 2)
  w_value, w_scale = SCHEMES[scheme].quantize(w)
  a, a_scale = (quantize_activations(x) if activation is not None else (x, None))
  cfg = triton_gpu.Config(block_n=64, block_t=32, warps=4, stages=1)
  got = triton_gpu.dequant_grouped_gemm(a, a_scale, w_value, w_scale,
                                        jnp.asarray(sizes, jnp.int32), group=weight.group,
                                        e2m1=weight.format.name == "e2m1",
                                        out_dtype=jnp.bfloat16, config=cfg)
  assert got.dtype == jnp.bfloat16
  want = _grouped(scheme, x, w_value, w_scale, sizes, "reference")
  ad, wd = _dense_operands(x, w_value, w_scale, weight, activation)
  bound = _bound(ad, wd, sizes, weight.group) + 2.0**-7 * np.abs(
      np.asarray(want, np.float64))
  _check(got, want, bound)


@pytest.mark.parametrize("scheme", ["int4_w4a8", "mxfp4_w4a16"])
def test_dense_linear_with_a_producer_interpret(interpret, scheme):
  """dequant_linear: [2, 3, K] rows (lead axes kept) from an RMSNorm producer, one group."""
  weight, activation = _quantizers(scheme)
  x, w = _operands(4, 6, 192, 48, 1)
  norm = RMSNormOf(x.reshape(2, 3, 192), jnp.linspace(0.5, 1.5, 192).astype(jnp.bfloat16))
  w_value, w_scale = SCHEMES[scheme].quantize(w[0])
  kw = dict(weight=weight, activation=activation, out_dtype=jnp.float32)
  got = dequant_gemm_op.dequant_linear(norm, w_value, w_scale, impl="triton", **kw)
  want = dequant_gemm_op.dequant_linear(norm, w_value, w_scale, impl="reference", **kw)
  assert got.shape == (2, 3, 48)
  a, wd = _dense_operands(norm, w_value[None], w_scale[None], weight, activation)
  _check(np.asarray(got).reshape(6, 48), np.asarray(want).reshape(6, 48),
         _bound(a.reshape(6, 192), wd, [6], weight.group))


@pytest.mark.parametrize("scheme", W4)
def test_nan_and_inf_activations_propagate_as_the_reference_interpret(interpret, scheme):
  """A NaN in one row and +-inf in others: W4A8's per-token scale of such a row is NaN,
  so the whole row is; W4A16 gives inf, or NaN where an inf meets a zero weight or
  infinities of both signs meet."""
  weight, activation = _quantizers(scheme)
  x, w = _operands(5, 6, 128, 32, 2)
  x = x.at[1, 5].set(jnp.nan).at[2, 7].set(jnp.inf).at[4, 0].set(-jnp.inf)
  w = w.at[:, :4, 7].set(0.0)  # row 2's inf meets zero weights in columns 0-3
  w_value, w_scale = SCHEMES[scheme].quantize(w)
  got = _grouped(scheme, x, w_value, w_scale, [3, 3], "triton")
  want = _grouped(scheme, x, w_value, w_scale, [3, 3], "reference")
  assert np.isnan(np.asarray(want)[1]).all() and not np.isfinite(np.asarray(want)[2]).any()
  a, wd = _dense_operands(x, w_value, w_scale, weight, activation)
  with np.errstate(invalid="ignore"):
    _check(got, want, _bound(a, wd, [3, 3], weight.group))


def test_every_int4_nibble_and_fp32_scales_interpret(interpret):
  """All 16 int4 codes (-8, never made by the quantizer, included) in both nibbles of a
  byte, with FP32 group scales of very different sizes."""
  weight, activation = _quantizers("int4_w4a16")
  n, k = 32, 256
  codes = _every_code((1, n, k))
  values = np.where(codes >= 8, codes.astype(np.int8) - 16, codes).astype(ml_dtypes.int4)
  w_value = weight.pack(jnp.asarray(values))
  assert set(np.asarray(values).astype(np.int8).ravel()) == set(range(-8, 8))
  w_scale = jnp.asarray(np.float32(2.0) ** np.arange(-30, 34, 1)[:n * 2].reshape(1, n, 2))
  x = jax.random.normal(jax.random.key(6), (5, k), jnp.bfloat16)
  got = _grouped("int4_w4a16", x, w_value, w_scale, [5], "triton")
  want = _grouped("int4_w4a16", x, w_value, w_scale, [5], "reference")
  a, wd = _dense_operands(x, w_value, w_scale, weight, activation)
  _check(got, want, _bound(a, wd, [5], 128))


@pytest.mark.parametrize("scheme", ["mxfp4_w4a16", "mxfp4_w4a8"])
@pytest.mark.parametrize("codes,x_mag", [
    ((1, 2, 127, 126), 2.0**4),  # 2^-126, 2^-125, 1, 1/2
    ((254, 253, 200, 127), 2.0**-10),  # 2^127, 2^126, 2^73, 1
], ids=["small-scales", "large-scales"])
def test_every_e2m1_code_and_e8m0_extremes_interpret(interpret, scheme, codes, x_mag):
  """All 16 e2m1 codes (-0 included) and E8M0 scale codes at the ends of the range, one
  code per weight row. The kernel multiplies a group's partial by its scale, the reference
  each weight, so the operands keep both orders in range: under 2^-126 the weights are 0
  or at least 2 in magnitude and the activations large (no subnormal weight or product:
  XLA's CPU code flushes them to zero, the interpreter's callback thread too, so code 0,
  2^-127, a subnormal FP32 scale, reads as 0 on both sides here and is left out), under
  2^126 and up at most 1.5 (1.5 * 2^127 is finite) and the activations small. W4A8
  stops at 2^73 there: its FP8 activations are scaled to 448, and a partial of
  448 * 6 * 32 times 2^127 overflows where the reference's a * w does not."""
  weight, activation = _quantizers(scheme)
  if activation is not None:
    codes = tuple(min(c, 200) for c in codes)
  n, k = 16, 96
  c = (np.arange(n * k) * 5 % 16).astype(np.uint8).reshape(1, n, k)
  scale_codes = np.array(codes, np.uint8)[np.arange(n) % 4]  # [N]
  c = np.where((scale_codes == 1)[None, :, None] & ((c & 7) < 4) & ((c & 7) > 0), c | 4, c)
  c = np.where((scale_codes > 250)[None, :, None] & ((c & 7) > 3), c & 8 | 3, c)
  values = (np.where(c & 8, -1.0, 1.0) * np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])[c & 7])
  w_value = weight.pack(jnp.asarray(values.astype(ml_dtypes.float4_e2m1fn)))
  w_scale = jnp.asarray(np.broadcast_to(scale_codes[None, :, None], (1, n, 3)).view(
      ml_dtypes.float8_e8m0fnu))
  r = jax.random.normal(jax.random.key(7), (3, k))
  x = (jnp.sign(r) * (1 + jnp.abs(r)) * x_mag).astype(jnp.bfloat16)  # |x| >= x_mag
  got = _grouped(scheme, x, w_value, w_scale, [3], "triton")
  want = np.asarray(_grouped(scheme, x, w_value, w_scale, [3], "reference"))
  assert np.all(np.isfinite(want)) and np.all(want != 0)
  a, wd = _dense_operands(x, w_value, w_scale, weight, activation)
  _check(got, want, _bound(a, wd, [3], 32))


@pytest.mark.parametrize("scheme", ["int4_w4a16", "mxfp4_w4a8"])
def test_packed_dequantization_against_ml_dtypes(scheme):
  """The reference's weight, unpacked from the stored bytes by numpy bit ops and decoded
  by ml_dtypes (int4 from the sign-extended nibble, e2m1 and E8M0 from their codes), times
  the scales: equal."""
  weight, _ = _quantizers(scheme)
  k = 131
  w = jax.random.normal(jax.random.key(8), (2, 8, k))
  w_value, w_scale = SCHEMES[scheme].quantize(w)
  b = np.asarray(w_value)
  codes = np.stack([b & 0xF, b >> 4], axis=-1).reshape(2, 8, -1)[..., :k]
  if weight.format.name == "int4":
    v = np.where(codes >= 8, codes.astype(np.int16) - 16, codes).astype(ml_dtypes.int4)
    s = np.asarray(w_scale, np.float64)
  else:
    v = codes.view(ml_dtypes.float4_e2m1fn)
    s = np.asarray(w_scale).view(np.uint8).view(ml_dtypes.float8_e8m0fnu)
  s = np.repeat(s.astype(np.float64), weight.group, axis=-1)[..., :k]
  want = v.astype(np.float64) * s
  got = np.asarray(weight.dequantize(weight.unpack(w_value, k), w_scale), np.float64)
  np.testing.assert_array_equal(got, want.astype(np.float32))


@pytest.mark.parametrize("scheme", ["e5m2", "mxfp8", "fp8_tensor", "int4_tensor"])
def test_other_formats_refuse_the_kernel_and_fall_back(interpret, scheme):
  """Formats the kernel does not take: impl="triton" says Unsupported, and the default
  order (the kernel available, as on a Hopper GPU) runs the reference."""
  weight, activation = _quantizers(scheme)
  x, w = _operands(9, 8, 128, 32, 2)
  w_value, w_scale = SCHEMES[scheme].quantize(w)
  with pytest.raises(backend.Unsupported, match="the Triton 4-bit GEMM takes"):
    _grouped(scheme, x, w_value, w_scale, [4, 4], "triton")
  got = _grouped(scheme, x, w_value, w_scale, [4, 4], None)
  assert not interpret
  np.testing.assert_array_equal(got, _grouped(scheme, x, w_value, w_scale, [4, 4],
                                              "reference"))


def test_default_order_runs_the_kernel_for_4_bit_weights(interpret):
  x, w = _operands(10, 8, 128, 32, 2)
  w_value, w_scale = SCHEMES["int4_w4a8"].quantize(w)
  _grouped("int4_w4a8", x, w_value, w_scale, [4, 4], None)
  assert [name for name, _ in interpret] == ["_quantize_kernel", "_dequant_gemm_kernel"]


def test_entry_points_off_gpu_run_the_reference(monkeypatch):
  """Without a Hopper GPU the default order is the reference alone (any machine: the GPU
  check reads as off it)."""
  monkeypatch.setattr(backend, "on_hopper", lambda: False)
  x, w = _operands(11, 8, 128, 32, 2)
  w_value, w_scale = SCHEMES["mxfp4_w4a8"].quantize(w)
  with pytest.raises(backend.Unsupported):
    _grouped("mxfp4_w4a8", x, w_value, w_scale, [4, 4], "triton")
  np.testing.assert_array_equal(
      _grouped("mxfp4_w4a8", x, w_value, w_scale, [4, 4], None),
      _grouped("mxfp4_w4a8", x, w_value, w_scale, [4, 4], "reference"))


def test_weights_that_do_not_fit_the_activation_raise():
  x, w = _operands(12, 4, 130, 16, 1)
  w_value, w_scale = SCHEMES["int4_w4a8"].quantize(w)  # [1, 16, 65]
  with pytest.raises(ValueError, match=r"K=128 needs a rank-3 weight of uint8 \[\.\.\., "
                     r"64\] and scales \(1, 16, 1\); got uint8 \(1, 16, 65\)"):
    _grouped("int4_w4a8", x[:, :128], w_value, w_scale, [4], None)
  with pytest.raises(ValueError, match=r"rank-2 weight"):
    weight, activation = _quantizers("int4_w4a8")
    dequant_gemm_op.dequant_linear(x, w_value, w_scale, weight=weight,
                                   activation=activation)


def test_default_config():
  assert triton_gpu.default_config(96, 53) == triton_gpu.Config(128, 16, 4, 3)
  assert triton_gpu.default_config(32, 1) == triton_gpu.Config(128, 32, 4, 3)
  assert triton_gpu.default_config(49152, 53).block_t == 128
  assert triton_gpu.default_config(0, 53).block_t == 16
  cfg = triton_gpu.default_config(96, 53)
  assert cfg.k_splits == 1 and cfg.decode == "interleave"
  with pytest.raises(ValueError, match="k_splits must be at least 1"):
    triton_gpu.Config(64, 16, 4, 3, k_splits=0)
  with pytest.raises(ValueError, match="decode must be one of"):
    triton_gpu.Config(64, 16, 4, 3, decode="halves")


@pytest.mark.parametrize("scheme", ["int4_w4a8", "mxfp4_w4a16"])
@pytest.mark.parametrize("splits", [2, 3, 7])
def test_k_splits_interpret(interpret, scheme, splits):
  """K split into partial products: 5 groups of 128 (INT4) or 20 of 32 (MXFP4) over 2 or 3
  splits (uneven) or 7 (INT4: two splits hold no group), ragged with an empty expert and
  rows past the groups; the FP32 partials are summed after, within the same bound."""
  weight, activation = _quantizers(scheme)
  m, k, n, sizes = 30, 640, 72, [9, 0, 17]
  x, w = _operands(splits, m, k, n, len(sizes))
  w_value, w_scale = SCHEMES[scheme].quantize(w)
  x_q, x_s = (quantize_activations(x) if activation is not None else (x, None))
  got = triton_gpu.dequant_grouped_gemm(
      x_q, x_s, w_value, w_scale, jnp.asarray(sizes, jnp.int32), group=weight.group,
      e2m1=scheme.startswith("mxfp4"), out_dtype=jnp.float32,
      config=triton_gpu.Config(64, 16, 4, 2, k_splits=splits))
  assert [meta["K_SPLITS"] for name, meta in interpret
          if name == "_dequant_gemm_kernel"] == [splits]
  want = _grouped(scheme, x, w_value, w_scale, sizes, "reference")
  a, wd = _dense_operands(x, w_value, w_scale, weight, activation)
  _check(got, want, _bound(a, wd, sizes, weight.group))
  assert np.all(np.asarray(got)[sum(sizes):] == 0)


@pytest.mark.parametrize("scheme", ["int4_w4a8", "int4_w4a16", "mxfp4_w4a8"])
@pytest.mark.parametrize("decode", triton_gpu.DECODINGS)
def test_decodings_interpret(interpret, scheme, decode):
  """Every decoding (the interleaved one, the even and odd elements' two products,
  elementwise or, here in the interpreter, with the PTX one's elementwise stand-in) on
  all 16 codes of both nibbles, a dense product of 20 rows with K odd and off the group:
  within the bound of the reference. MXFP4's groups of 32 always interleave."""
  weight, activation = _quantizers(scheme)
  n, k = 24, 301
  codes = _every_code((1, n, k))
  if weight.format.name == "int4":
    values = np.where(codes >= 8, codes.astype(np.int8) - 16, codes).astype(ml_dtypes.int4)
  else:
    values = codes.view(ml_dtypes.float4_e2m1fn)
  w_value = weight.pack(jnp.asarray(values))
  _, w_scale = SCHEMES[scheme].quantize(jax.random.normal(jax.random.key(4), (1, n, k)))
  x = jax.random.normal(jax.random.key(5), (20, k), jnp.bfloat16)
  x_q, x_s = quantize_activations(x) if activation is not None else (x, None)
  got = triton_gpu.dequant_grouped_gemm(
      x_q, x_s, w_value, w_scale, jnp.array([20], jnp.int32), group=weight.group,
      e2m1=scheme.startswith("mxfp4"), out_dtype=jnp.float32,
      config=triton_gpu.Config(64, 16, 4, 2, decode=decode))
  (meta,) = [m for name, m in interpret if name == "_dequant_gemm_kernel"]
  assert meta["EVEN_ODD"] == (decode != "interleave" and weight.group >= 64)
  assert not meta["PTX"]  # the interpreter runs no inline PTX
  want = _grouped(scheme, x, w_value, w_scale, [20], "reference")
  a, wd = _dense_operands(x, w_value, w_scale, weight, activation)
  _check(got, want, _bound(a, wd, [20], weight.group))


def test_ptx_decoding_is_planned_for_int4_w4a8_where_the_kernel_compiles(monkeypatch):
  """decode="even_odd_ptx" decodes through PTX for INT4 weights under FP8 activations where
  the kernel is compiled; not for MXFP4 or 16-bit activations, and not under Triton's
  interpreter, which runs no inline PTX."""
  def planned(e2m1=False, w4a8=True, decode="even_odd_ptx", group=128):
    config = triton_gpu.Config(64, 16, 4, 3, decode=decode)
    meta = triton_gpu.dequant_gemm_plan(96, 256, 256, 3, group=group, e2m1=e2m1,
                                        e8m0=e2m1, w4a8=w4a8,
                                        dtype=jnp.float8_e4m3fn if w4a8 else jnp.bfloat16,
                                        config=config)[2]
    return meta["EVEN_ODD"], meta["PTX"]
  monkeypatch.delenv("TRITON_INTERPRET", raising=False)
  assert planned() == (True, True)
  assert planned(e2m1=True, group=32) == (False, False)  # groups of 32 interleave
  assert planned(e2m1=True) == (True, False)  # e2m1 codes: no PTX decoding
  assert planned(w4a8=False) == (True, False)
  assert planned(decode="even_odd") == (True, False)
  for value in ("1", "true", "ON"):  # Triton's own reading of the variable
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert planned() == (True, False)


def _route(key, rows, experts):
  ids = jax.random.randint(key, (rows,), 0, experts)
  return jnp.bincount(ids, length=experts).astype(jnp.int32)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", W4)
@pytest.mark.parametrize("rows,n", [(96, 2816), (96, 1408), (16384, 2816)])
def test_kernel_matches_reference_moe4b_gpu(scheme, rows, n):
  """moe-4b's routed experts (K = 1408, 53 experts) at the 32-token step (96 rows) and at
  16384 rows, through jax-triton, the output poisoned first."""
  k, e = 1408, 53
  weight, activation = _quantizers(scheme)
  x, w = _operands(rows + n, rows, k, n, e)
  gs = _route(jax.random.key(n), rows - 5, e)  # 5 rows past the groups
  w_value, w_scale = SCHEMES[scheme].quantize(w)
  f = jax.jit(lambda *a: _grouped(scheme, *a, "triton"))
  got = testing.poisoned_call(lambda: f(x, w_value, w_scale, gs), (rows, n), jnp.float32)
  want = _grouped(scheme, x, w_value, w_scale, gs, "reference")
  a, wd = _dense_operands(x, w_value, w_scale, weight, activation)
  _check(got, want, _bound(a, wd, gs, weight.group, gpu=True))
  assert np.all(np.asarray(got)[rows - 5:] == 0)


@pytest.mark.gpu
@pytest.mark.parametrize("rows,n", [(96, 2816), (16384, 1408)])
def test_decodings_gpu(rows, n):
  """INT4 W4A8 at moe-4b's expert shapes, every code of both nibbles (-8, never made by the
  quantizer, included) in the weights, through each decoding at the default tiling: the
  PTX one bit for bit the elementwise even/odd one (the same FP8 operands and products),
  each within the bound of the reference, outputs poisoned first."""
  k, e = 1408, 53
  codes = _every_code((e, n, k))
  values = np.where(codes >= 8, codes.astype(np.int8) - 16, codes).astype(ml_dtypes.int4)
  weight, activation = _quantizers("int4_w4a8")
  w_value = weight.pack(jnp.asarray(values))
  w_scale = jax.random.uniform(jax.random.key(1), (e, n, k // 128), jnp.float32, 0.5, 2.0)
  x = jax.random.normal(jax.random.key(rows), (rows, k), jnp.bfloat16)
  x_q, x_s = quantize_activations(x)
  gs = _route(jax.random.key(n), rows - 5, e)
  want = _grouped("int4_w4a8", x, w_value, w_scale, gs, "reference")
  a, wd = _dense_operands(x, w_value, w_scale, weight, activation)
  outs = {}
  for decode in triton_gpu.DECODINGS:
    cfg = dataclasses.replace(triton_gpu.default_config(rows, e), decode=decode)
    f = jax.jit(lambda *args, cfg=cfg: triton_gpu.dequant_grouped_gemm(
        *args, group=128, e2m1=False, out_dtype=jnp.float32, config=cfg))
    outs[decode] = np.asarray(testing.poisoned_call(
        lambda: f(x_q, x_s, w_value, w_scale, gs), (rows, n), jnp.float32))
    _check(outs[decode], want, _bound(a, wd, gs, 128, gpu=True))
  np.testing.assert_array_equal(outs["even_odd_ptx"], outs["even_odd"])


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["int4_w4a8", "int4_w4a16", "mxfp4_w4a8"])
@pytest.mark.parametrize("n", [2816, 1408])
def test_k_splits_at_the_shared_experts_shape_gpu(scheme, n):
  """moe-4b's shared expert at the 32-token step (a dense product of 32 rows) with K
  split 4 ways, through jax-triton: against the reference, output poisoned first."""
  k = 1408
  weight, activation = _quantizers(scheme)
  x, w = _operands(n, 32, k, n, 1)
  w_value, w_scale = SCHEMES[scheme].quantize(w)
  x_q, x_s = quantize_activations(x) if activation is not None else (x, None)
  cfg = dataclasses.replace(triton_gpu.default_config(32, 1), k_splits=4)
  f = jax.jit(lambda *args: triton_gpu.dequant_grouped_gemm(
      *args, group=weight.group, e2m1=scheme.startswith("mxfp4"), out_dtype=jnp.float32,
      config=cfg))
  gs = jnp.array([32], jnp.int32)
  # Poisons a buffer of the partial products' size: what the splits write.
  got = testing.poisoned_call(lambda: f(x_q, x_s, w_value, w_scale, gs),
                              (cfg.k_splits, 32, n), jnp.float32)
  want = _grouped(scheme, x, w_value, w_scale, [32], "reference")
  a, wd = _dense_operands(x, w_value, w_scale, weight, activation)
  _check(got, want, _bound(a, wd, [32], weight.group, gpu=True))


def _run_ptx(text: str, word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Interprets the instructions of a PTX block on 32-bit words [W] (uint32) in numpy: the
  ones _INT4_TO_E4M3 uses (xor, mov, shr, lop3, sub.f16x2, cvt e4m3x2.f16x2, prmt), as
  the PTX manual defines them; $2 is the input, ($0, $1) the outputs."""
  regs = {"$2": word.astype(np.uint32)}

  def val(a):
    return regs[a] if a in regs else np.uint32(int(a, 0))

  def f16x2(v):
    return np.stack([v & 0xFFFF, v >> 16]).astype(np.uint16).view(np.float16)

  for line in text.splitlines():
    line = line.strip().rstrip(";")
    if not line or line[0] in "{}.":
      continue
    op, args = line.split(None, 1)
    args = [a.strip() for a in args.replace("{", "").replace("}", "").split(",")]
    d = args[0]
    if op == "xor.b32":
      regs[d] = val(args[1]) ^ val(args[2])
    elif op == "mov.b32" and len(args) == 3:  # {lo, hi}: two 16-bit halves
      regs[d] = (val(args[1]) & 0xFFFF) | (val(args[2]) << 16)
    elif op == "mov.b32":
      regs[d] = np.broadcast_to(val(args[1]), word.shape).astype(np.uint32)
    elif op == "shr.u32":
      regs[d] = val(args[1]) >> val(args[2])
    elif op == "lop3.b32":
      a, b, c, lut = (val(x) for x in args[1:])
      out = np.zeros_like(a)
      for bits in range(8):  # the LUT's entry for each (a, b, c) bit combination
        if int(lut) >> bits & 1:
          sa, sb, sc = (bits >> 2 & 1, bits >> 1 & 1, bits & 1)
          out |= ((a if sa else ~a) & (b if sb else ~b) & (c if sc else ~c))
      regs[d] = out
    elif op == "sub.f16x2":
      diff = f16x2(val(args[1])) - f16x2(val(args[2]))
      bits = diff.view(np.uint16).astype(np.uint32)
      regs[d] = bits[0] | (bits[1] << 16)
    elif op == "cvt.rn.satfinite.e4m3x2.f16x2":  # the low half to the low byte
      halves = f16x2(val(args[1])).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
      regs[d] = halves[0].astype(np.uint32) | (halves[1].astype(np.uint32) << 8)
    elif op == "prmt.b32":
      src = val(args[1]).astype(np.uint64) | (val(args[2]).astype(np.uint64) << 32)
      sel = int(val(args[3]))
      regs[d] = sum(((src >> np.uint64(8 * (sel >> 4 * i & 7))) & np.uint64(0xFF)).astype(
          np.uint32) << (8 * i) for i in range(4))
    else:
      raise AssertionError(f"instruction not modelled: {line}")
  return regs["$0"], regs["$1"]


def test_ptx_decoding_text_decodes_every_code():
  """_INT4_TO_E4M3, interpreted instruction by instruction (_run_ptx), on every byte value
  in each of the four byte positions of a word: $0 holds the e4m3 bytes of the four low
  nibbles, $1 of the high ones, in byte order, as ml_dtypes encodes the sign-extended
  codes."""
  rng = np.random.default_rng(0)
  words = np.concatenate([np.arange(256, dtype=np.uint32) << (8 * j) for j in range(4)]
                         + [rng.integers(0, 2**32, 4096, dtype=np.uint32)])
  even, odd = _run_ptx(triton_gpu._INT4_TO_E4M3.value, words)
  data = words.view(np.uint8).reshape(-1, 4)
  for got, nibble in ((even, data & 0xF), (odd, data >> 4)):
    signed = np.where(nibble >= 8, nibble.astype(np.int16) - 16, nibble)
    want = signed.astype(np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    np.testing.assert_array_equal(got.astype(np.uint32).view(np.uint8).reshape(-1, 4), want)
