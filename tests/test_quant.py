"""FP8 quantization: the quantizer against independent casts (ml_dtypes, torch), the FP8
reference ops against float64 and against the error bound of docs/fp8.md, rules and
quantize_params. Model-free; the model under FP8 is tests/test_fp8_model.py."""

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from onerec_kernels.fp8_linear import fp8_linear
from onerec_kernels.grouped_gemm import fp8_grouped_gemm
from onerec_kernels.quantize import SwiGLUOf, quantize_blocks, quantize_rows
from onerec_kernels.quantize.reference import cast_to_fp8

from onerec_kernels.int8_gemm import int8_linear

from onerec_jax.quant import (QArray, QuantizationError, Rules, quantize_params,
                             quantize_weight, quantized_matmul, weight_bytes)
from onerec_jax.quant.schemes import SCHEMES


U8 = 2.0**-4 + 2.0**-21  # e4m3 unit roundoff, plus the FP32 division and clip (docs/fp8.md)
SUB = 2.0**-10  # half the e4m3 subnormal spacing: the absolute error floor, in scaled units
U32 = 2.0**-24


# Independent quantizer: numpy FP32 arithmetic, then ml_dtypes' and torch's FP8 casts.
# XLA rewrites the reference's division by the constant 448 into a multiplication by its
# FP32 reciprocal, so the executed scale is amax * fl(1/448), within 1 ulp of the correctly
# rounded amax / 448 (docs/fp8.md); x / scale stays a true FP32 division.
def _ref_scale(amax: np.ndarray) -> np.ndarray:
  amax = amax.astype(np.float32)
  return np.where(amax > 0, amax * np.float32(1 / 448), np.float32(1)).astype(np.float32)


def _ref_cast_bits(x: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(ml_dtypes bits, torch bits) of clip(x / scale, +-448) in float8_e4m3fn."""
  y = np.clip(x.astype(np.float32) / scale, -448, 448).astype(np.float32)
  ml = y.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
  th = torch.from_numpy(y).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
  return ml, th


def _bits(a: jax.Array) -> np.ndarray:
  return np.asarray(a).view(np.uint8)


def _block_amax(x: np.ndarray, br: int, bc: int) -> np.ndarray:
  *lead, m, k = x.shape
  mb, kb = -(-m // br), -(-k // bc)
  pad = [(0, 0)] * len(lead) + [(0, mb * br - m), (0, kb * bc - k)]
  xp = np.pad(np.abs(x.astype(np.float32)), pad)
  return xp.reshape(*lead, mb, br, kb, bc).max(axis=(-3, -1))


def _expand(scale: np.ndarray, m: int, k: int, br: int, bc: int) -> np.ndarray:
  return np.repeat(np.repeat(scale, br, axis=-2), bc, axis=-1)[..., :m, :k]


def _test_matrix(dtype, rng: np.random.Generator) -> np.ndarray:
  """Rows of very different magnitudes, wide in-row dynamic range (so that scaled values
  fall into the e4m3 subnormals and underflow), zeros, an all-zero row, exact powers of
  two and e4m3 ties, FP16 subnormals. K = 200: a partial 128-wide block."""
  m, k = 24, 200
  x = rng.standard_normal((m, k)) * 10.0 ** rng.uniform(-3, 3, (m, 1))
  x[3] *= np.exp(rng.uniform(-12, 0, k))  # scaled values down to ~1e-5 * 448
  x[5] = 0.0  # all-zero row
  x[7, ::3] = 0.0  # scattered zeros
  x[9] = rng.choice([-1.0, 1.0], k) * 2.0 ** rng.integers(-12, 9, k)  # exact powers of 2
  x[9, :4] = [448.0, -448.0, 464.0, 3 * 2.0**-10]  # e4m3 max, a tie above it, a subnormal tie
  x[11] = rng.standard_normal(k) * 1e-6  # FP16 subnormals (smallest normal is 6.1e-5)
  return x.astype(dtype)


# Eagerly and under jit: XLA's rewrites must not change a bit between the two.
MODES = {"eager": lambda f: f, "jit": lambda f: jax.jit(f, static_argnums=(1, 2))}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_quantize_rows_bit_exact(dtype, mode):
  x = _test_matrix(dtype, np.random.default_rng(0))
  value, scale = MODES[mode](lambda x, *_: quantize_rows(x))(jnp.asarray(x))
  want_scale = _ref_scale(np.abs(x.astype(np.float32)).max(-1))
  np.testing.assert_array_equal(np.asarray(scale), want_scale)
  ml, th = _ref_cast_bits(x, want_scale[:, None])
  np.testing.assert_array_equal(_bits(value), ml)
  np.testing.assert_array_equal(_bits(value), th)
  assert np.all(np.asarray(scale)[5] == 1.0) and not np.any(_bits(value)[5] & 0x7F)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("br,bc", [(1, 128), (128, 128)])
def test_quantize_blocks_bit_exact(dtype, br, bc, mode):
  rng = np.random.default_rng(1)
  x = np.stack([_test_matrix(dtype, rng) for _ in range(2)])  # [2, 24, 200]: lead axis
  x = np.concatenate([x, x * 3], axis=1)[:, :40]  # 40 rows: one partial 128-row block
  value, scale = MODES[mode](quantize_blocks)(jnp.asarray(x), br, bc)
  want_scale = _ref_scale(_block_amax(x, br, bc))
  np.testing.assert_array_equal(np.asarray(scale), want_scale)
  ml, th = _ref_cast_bits(x, _expand(want_scale, x.shape[-2], x.shape[-1], br, bc))
  np.testing.assert_array_equal(_bits(value), ml)
  np.testing.assert_array_equal(_bits(value), th)


def test_cast_at_and_beyond_448_and_denormals():
  """With scale 1: saturation at +-448 (464 would round to 480, a NaN code in e4m3fn),
  +-inf, the subnormal range and its round-to-nearest-even ties, signed zeros."""
  special = [448, 449, 463.99, 464, 470, 480, 1e4, 3.4e38, np.inf, 2.0**-6, 2.0**-7,
             2.0**-9, 2.0**-10, 3 * 2.0**-10, 5 * 2.0**-10, 2.0**-11, 1e-30, 0.0,
             240, 248, 256, 0.0625 * 1.0625]
  x = np.array(special + [-v for v in special], np.float32)
  ones = np.ones_like(x)
  got = _bits(cast_to_fp8(jnp.asarray(x), jnp.asarray(ones)))
  ml, th = _ref_cast_bits(x, ones)
  np.testing.assert_array_equal(got, ml)
  np.testing.assert_array_equal(got, th)
  got_f = np.asarray(cast_to_fp8(jnp.asarray(x), jnp.asarray(ones))).astype(np.float32)
  assert np.all(np.abs(got_f) <= 448) and not np.any(np.isnan(got_f))
  assert got_f[special.index(464)] == 448 and got_f[special.index(2.0**-10)] == 0
  assert got_f[special.index(3 * 2.0**-10)] == 2.0**-8  # tie to even mantissa


# FP8 reference ops. ---------------------------------------------------------------------
def _dequant_rows(value, scale) -> np.ndarray:
  return np.asarray(value).astype(np.float64) * np.asarray(scale, np.float64)[..., None]


def _dequant_blocks(value, scale, br, bc) -> np.ndarray:
  v = np.asarray(value).astype(np.float64)
  return v * _expand(np.asarray(scale, np.float64), v.shape[-2], v.shape[-1], br, bc)


def _elem_scale_rows(scale, k) -> np.ndarray:
  return np.repeat(np.asarray(scale, np.float64)[..., None], k, axis=-1)


def _fp8_error_bound(x, w, sx, sw) -> np.ndarray:
  """The bound of docs/fp8.md on |y_fp8 - x @ w.T| (before the FP32 accumulation term):
  per element |x_hat - x| <= U8 |x| + SUB s_x, so the product's error is at most
  sum_k dx |w| + |x| dw + dx dw. x [M, K], w [N, K], sx/sw their per-element scales."""
  dx = U8 * np.abs(x) + SUB * sx
  dw = U8 * np.abs(w) + SUB * sw
  return dx @ np.abs(w).T + np.abs(x) @ dw.T + dx @ dw.T


def _sqnr_db(ref, test) -> float:
  return 10 * np.log10(np.sum(ref**2) / np.sum((ref - test) ** 2))


def _operands(rng, m, n, k, e=None):
  x = rng.standard_normal((m, k)) * 10.0 ** rng.uniform(-2, 2, (m, 1))
  x[0] = 0.0  # an all-zero token
  x[1, :7] *= 300  # outlier channels
  w_shape = (n, k) if e is None else (e, n, k)
  w = rng.standard_normal(w_shape) * 0.05
  return x.astype(np.float32), w.astype(np.float16)


def test_fp8_linear_float64_and_bound():
  rng = np.random.default_rng(2)
  m, n, k = 33, 48, 200
  x, w = _operands(rng, m, n, k)
  w_q, s_w = quantize_rows(jnp.asarray(w))
  y = np.asarray(fp8_linear(jnp.asarray(x), w_q, s_w, out_dtype=jnp.float32), np.float64)
  x_q, s_x = quantize_rows(jnp.asarray(x))
  xd, wd = _dequant_rows(x_q, s_x), _dequant_rows(w_q, s_w)
  # Equal to the float64 product of the dequantized operands up to FP32 accumulation.
  accum = (k + 3) * U32 * (np.abs(xd) @ np.abs(wd).T)
  assert np.all(np.abs(y - xd @ wd.T) <= accum)
  # Within the derived bound of the unquantized product.
  x64, w64 = x.astype(np.float64), w.astype(np.float64)
  exact = x64 @ w64.T
  bound = _fp8_error_bound(x64, w64, _elem_scale_rows(s_x, k), _elem_scale_rows(s_w, k))
  assert np.all(np.abs(y - exact) <= bound + accum)
  assert np.all(y[0] == 0)
  assert _sqnr_db(exact, y) > 25  # docs/fp8.md: about 28 dB for Gaussian operands


def test_fp8_grouped_gemm_float64_and_bound():
  rng = np.random.default_rng(3)
  m, n, k, e = 40, 150, 200, 3
  x, w = _operands(rng, m, n, k, e)
  sizes = np.array([13, 0, 20], np.int32)  # 33 routed rows, 7 padding rows
  w_q, s_w = quantize_blocks(jnp.asarray(w), 128, 128)
  y = np.asarray(fp8_grouped_gemm(jnp.asarray(x), w_q, s_w, jnp.asarray(sizes),
                                  out_dtype=jnp.float32), np.float64)
  x_q, s_x = quantize_blocks(jnp.asarray(x), 1, 128)
  xd, wd = _dequant_blocks(x_q, s_x, 1, 128), _dequant_blocks(w_q, s_w, 128, 128)
  sx = _expand(np.asarray(s_x, np.float64), m, k, 1, 128)
  sw = _expand(np.asarray(s_w, np.float64), n, k, 128, 128)
  x64, w64 = x.astype(np.float64), w.astype(np.float64)
  kb = -(-k // 128)
  start = 0
  for g, size in enumerate(sizes):
    rows = slice(start, start + size)
    start += size
    accum = (k + 2 * kb + 3) * U32 * (np.abs(xd[rows]) @ np.abs(wd[g]).T)
    assert np.all(np.abs(y[rows] - xd[rows] @ wd[g].T) <= accum)
    exact = x64[rows] @ w64[g].T
    bound = _fp8_error_bound(x64[rows], w64[g], sx[rows], sw[g])
    assert np.all(np.abs(y[rows] - exact) <= bound + accum)
    if size > 1:
      assert _sqnr_db(exact, y[rows]) > 25
  assert np.all(y[start:] == 0)  # padding rows


# Rules and quantize_params on a model-free tree. ------------------------------------------
def _tree():
  rng = np.random.default_rng(4)
  f = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float16))
  return {"layer_0": {"attn": {"q": {"weight": f(8, 16)}, "o": {"weight": f(16, 8)}},
                      "norm": {"weight": f(16)},
                      "experts": {"up": {"weight": f(2, 130, 200)}}},
          "layer_10": {"attn": {"q": {"weight": f(8, 16)}}},
          "embed": {"table": f(5, 16)}}


RULES = Rules(((r"layer_\d+/attn/o", "none"), (r"layer_\d+/attn/.*", "per_channel"),
               (r".*/experts/.*", "block")))


def test_quantize_params_replaces_exactly_the_matched_weights():
  tree = _tree()
  q = quantize_params(tree, RULES)
  for path in (("layer_0", "attn", "q"), ("layer_10", "attn", "q")):
    leaf = q[path[0]][path[1]][path[2]]["weight"]
    orig = tree[path[0]][path[1]][path[2]]["weight"]
    assert isinstance(leaf, QArray) and leaf.value.dtype == jnp.float8_e4m3fn
    chex.assert_trees_all_equal(tuple(quantize_rows(orig)), (leaf.value, leaf.scale))
  up = q["layer_0"]["experts"]["up"]["weight"]
  assert up.scale.shape == (2, 2, 2) and up.scale.dtype == jnp.float32
  chex.assert_trees_all_equal(tuple(quantize_blocks(tree["layer_0"]["experts"]["up"]
                                                    ["weight"], 128, 128)),
                              (up.value, up.scale))
  for unchanged in (("layer_0", "attn", "o", "weight"), ("layer_0", "norm", "weight"),
                    ("embed", "table")):
    a, b = tree, q
    for key in unchanged:
      a, b = a[key], b[key]
    assert a is b


def test_quantize_params_abstract():
  abstract = jax.eval_shape(lambda t: quantize_params(t, RULES), _tree())
  up = abstract["layer_0"]["experts"]["up"]["weight"]
  assert isinstance(up, QArray)
  assert up.value.shape == (2, 130, 200) and up.value.dtype == jnp.float8_e4m3fn
  assert up.scale.shape == (2, 2, 2) and up.scale.dtype == jnp.float32


@pytest.mark.parametrize("rules,message", [
    (Rules(((r"layer_0/attn/.*", "per_channel"), (r"layer_0/attn/q", "per_channel"))),
     "rule 'layer_0/attn/q' -> 'per_channel' matches no weight"),
    (Rules(((r"layer_\d/attn/q", "per_channel"),)), None),  # fullmatch: not layer_10
    (Rules(((r"nowhere", "block"),)), "rule 'nowhere' -> 'block' matches no weight"),
    (Rules(((r"layer_0/attn/q", "block"),)),
     "layer_0/attn/q (rule 'layer_0/attn/q'): scheme 'block' needs a [E, N, K] weight"),
    (Rules(((r"layer_0/(norm|experts/up)", "per_channel"),)),
     "layer_0/norm (rule 'layer_0/(norm|experts/up)'): scheme 'per_channel' needs a "
     "[N, K] weight, got shape (16,)"),
])
def test_quantize_params_errors(rules, message):
  if message is None:
    q = quantize_params(_tree(), rules)
    assert isinstance(q["layer_0"]["attn"]["q"]["weight"], QArray)
    assert not isinstance(q["layer_10"]["attn"]["q"]["weight"], QArray)
    return
  with pytest.raises(QuantizationError) as e:
    quantize_params(_tree(), rules)
  assert message in str(e.value)
  if "norm" in message:  # every problem is reported, not only the first
    assert "layer_0/experts/up" in str(e.value)


def test_quantize_params_refuses_quantized_weights():
  q = quantize_params(_tree(), RULES)
  with pytest.raises(QuantizationError, match="layer_0/attn/q: weight is already quantized"):
    quantize_params(q, RULES)


def test_rules_json_hash_and_validation():
  assert Rules.from_json(RULES.to_json()) == RULES
  assert hash(Rules.from_json(RULES.to_json())) == hash(RULES)
  assert RULES.scheme("layer_3/attn/o") == "none"
  assert RULES.scheme("layer_3/attn/qkv") == "per_channel"
  assert RULES.scheme("embed") == "none"
  jitted = jax.jit(lambda x, r: x * len(r.rules), static_argnums=1)
  assert int(jitted(jnp.int32(1), RULES)) == 3
  with pytest.raises(ValueError, match="unknown scheme 'fp4'"):
    Rules((("a", "fp4"),))
  with pytest.raises(ValueError, match="invalid regular expression"):
    Rules((("a(", "block"),))
  with pytest.raises(ValueError, match="block=64"):
    Rules.from_json(RULES.to_json().replace('"block": 128', '"block": 64'))


def test_quantized_matmul_producer_replaces_x_and_must_match_its_shape():
  x = jax.random.normal(jax.random.key(0), (4, 256))
  w = QArray(*quantize_rows(jax.random.normal(jax.random.key(1), (64, 256))))
  gate_up = jnp.concatenate([x, 2 * x], -1)
  y = quantized_matmul("per_channel", x, w, out_dtype=jnp.float32,
                       producer=SwiGLUOf(gate_up))
  chex.assert_trees_all_equal(y, fp8_linear(SwiGLUOf(gate_up), w.value, w.scale,
                                            out_dtype=jnp.float32))
  with pytest.raises(ValueError, match=r"producer computes shape \(4, 128\), but the "
                     r"module's input has shape \(4, 256\)"):
    quantized_matmul("per_channel", x, w, out_dtype=jnp.float32,
                     producer=SwiGLUOf(x))


# The schemes below FP8 (onerec_jax.quant.schemes; their formats: tests/test_formats.py).
DEQUANT_SCHEMES = ["fp8_tensor", "e5m2", "mxfp8", "int4_w4a16", "int4_w4a8", "mxfp4_w4a16",
                   "mxfp4_w4a8", "int4_tensor"]


def _scheme_quantizers(name):
  """(weight quantizer, activation quantizer or None) the scheme's ops were built with."""
  _, op = SCHEMES[name].ops[2]
  return op.keywords["weight"], op.keywords["activation"]


@pytest.mark.parametrize("name", DEQUANT_SCHEMES)
def test_dequant_schemes_equal_the_float64_product_of_their_operands(name):
  """Linear and GroupedLinear under the scheme: the float64 product of the dequantized
  weight and the quantized-dequantized activation (the compute-dtype activation for
  W4A16), within the FP32 accumulation term; rows past the groups are zero."""
  rng = np.random.default_rng(5)
  m, n, k, e = 40, 48, 200, 3
  x, w = _operands(rng, m, n, k)
  _, we = _operands(rng, m, n, k, e)
  wq, aq = _scheme_quantizers(name)
  xd = np.asarray(x, np.float64) if aq is None else np.asarray(aq.round_trip(x), np.float64)
  sizes = np.array([13, 0, 20])
  for weight, args in ((w, ()), (we, (jnp.asarray(sizes, jnp.int32),))):
    q = quantize_weight(jnp.asarray(weight), name)
    stored = (*weight.shape[:-1], (k + 1) // 2 if wq.packed else k)  # 4 bits: 2 a byte
    assert q.value.shape == stored and q.scale.shape == wq.scale_shape(weight.shape)
    assert q.value.dtype == (jnp.uint8 if wq.packed else wq.format.dtype)
    assert wq.unpack(q.value, k).dtype == wq.format.dtype
    y = np.asarray(quantized_matmul(name, jnp.asarray(x), q, *args, out_dtype=jnp.float32),
                   np.float64)
    wd = np.asarray(wq.dequantize(wq.unpack(q.value, k), q.scale), np.float64)
    if not args:
      want, mag = xd @ wd.T, np.abs(xd) @ np.abs(wd).T
    else:
      want, mag = np.zeros((m, n)), np.zeros((m, n))
      for g, rows in enumerate(np.split(np.arange(sizes.sum()), np.cumsum(sizes)[:-1])):
        want[rows], mag[rows] = xd[rows] @ wd[g].T, np.abs(xd[rows]) @ np.abs(wd[g]).T
    assert np.all(np.abs(y - want) <= (k + 2) * U32 * mag + 1e-30), name
    if args:
      assert np.all(y[sizes.sum():] == 0)


def test_int4_group_scales_beat_one_scale_per_tensor_on_outlier_rows():
  """Rows 100x apart (outlier channels): one tensor scale rounds the small rows to almost
  nothing; 1 x 128 groups keep each row's 4-bit resolution (~ 20 dB a weight)."""
  rng = np.random.default_rng(6)
  w = rng.standard_normal((64, 256)).astype(np.float32)
  w[::8] *= 100.0
  sqnr = {}
  for name in ("int4_w4a16", "int4_tensor"):
    q = quantize_weight(jnp.asarray(w), name)
    wq = _scheme_quantizers(name)[0]
    wd = np.asarray(wq.dequantize(wq.unpack(q.value, 256), q.scale))
    small = np.ones(64, bool)
    small[::8] = False
    sqnr[name] = _sqnr_db(w[small].astype(np.float64), wd[small])
  assert sqnr["int4_w4a16"] > 18 and sqnr["int4_tensor"] < 5, sqnr


def test_int8_scheme_runs_the_int8_ops_and_fits_both_ranks():
  rng = np.random.default_rng(7)
  x, w = _operands(rng, 8, 48, 200)
  q = quantize_weight(jnp.asarray(w), "int8")
  assert q.value.dtype == jnp.int8 and q.scale.shape == (48,)
  y = quantized_matmul("int8", jnp.asarray(x), q, out_dtype=jnp.float32)
  chex.assert_trees_all_equal(y, int8_linear(jnp.asarray(x), q.value, q.scale,
                                             out_dtype=jnp.float32))
  assert SCHEMES["int8"].ops[3][0] == "int8_grouped_gemm"
  assert SCHEMES["per_channel"].weight_desc == "[N, K]"
  assert SCHEMES["int4_w4a8"].weight_desc == "[N, K] or [E, N, K]"


def test_weight_bytes_counts_4_bit_values_at_half_a_byte():
  w = jnp.zeros((64, 256), jnp.float16)
  tree = {"a": {"weight": w}, "b": {"weight": quantize_weight(w, "int4_w4a16")},
          "c": {"weight": quantize_weight(w, "mxfp4_w4a8")},
          "d": {"weight": quantize_weight(w, "per_channel")}}
  assert weight_bytes(tree) == (64 * 256 * 2 + 64 * 256 // 2 + 64 * 2 * 4
                                + 64 * 256 // 2 + 64 * 8 + 64 * 256 + 64 * 4)
