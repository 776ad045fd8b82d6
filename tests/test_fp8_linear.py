"""FP8 linear kernel: the Pallas Mosaic GPU kernel against fp8_linear_reference.

On the CPU the kernel runs in Mosaic GPU interpret mode at small shapes with small tiles;
GPU tests (marked) run the benchmark shapes.
"""

import pathlib
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

from onerec_kernels.fp8_linear import (
    default_config,
    fp8_linear,
    fp8_linear_pallas,
    fp8_linear_reference,
)
from onerec_kernels import backend
from onerec_kernels import fp8_linear as fp8_linear_module
from onerec_kernels.gemm_mgpu import core, testing
from onerec_kernels.quantize.activations import per_token_linear
from onerec_kernels.quantize import (RMSNormOf, SwiGLUOf, quantize_activations,
                                     quantize_activations_reference, quantize_rows)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import bench_fp8_linear  # noqa: E402  (the benchmark's candidate tilings)

SMALL = testing.SMALL


def _operands(key, m, n, k):
  """Quantized x [M, K] with a zero row and values beyond 448, and w [N, K]."""
  kx, kw = jax.random.split(key)
  x = jax.random.normal(kx, (m, k), jnp.float32) * 3.0
  x = x.at[m // 2].set(0.0).at[0, :5].set(jnp.array([900.0, -2000.0, 460.0, 1e4, -449.0]))
  w = jax.random.normal(kw, (n, k), jnp.float32) * 0.05
  return (*quantize_rows(x), *quantize_rows(w))


def _check(operands, out, k):
  ref = fp8_linear_reference(*operands, out_dtype=jnp.float32)
  testing.assert_within(out, ref, testing.fp8_linear_error_bound(*operands),
                        testing.fp8_linear_rel_tol(k))


@pytest.mark.parametrize("m,n,k,cfg", testing.LINEAR_INTERPRET_CASES)
def test_pallas_matches_reference_interpret(m, n, k, cfg):
  ops = _operands(jax.random.key(m + n + k), m, n, k)
  with plgpu.force_gpu_interpret_mode():
    out = fp8_linear_pallas(*ops, out_dtype=jnp.float32, config=cfg)
  assert out.shape == (m, n)
  _check(ops, out, k)
  assert bool(jnp.all(out[m // 2] == 0))  # the all-zero row


def test_pallas_bf16_output_interpret():
  ops = _operands(jax.random.key(7), 64, 64, 128)
  with plgpu.force_gpu_interpret_mode():
    out = fp8_linear_pallas(*ops, config=SMALL)
  assert out.dtype == jnp.bfloat16
  _check_bf16(ops, out, 128)


@pytest.mark.parametrize("producer", [None, "rmsnorm", "swiglu"])
def test_entry_point_off_gpu_is_reference(producer):
  x = jax.random.normal(jax.random.key(0), (2, 5, 96), jnp.bfloat16)
  src = {None: x, "rmsnorm": RMSNormOf(x, jnp.linspace(0.5, 2.0, 96)),
         "swiglu": SwiGLUOf(jnp.concatenate([x, 2 * x], -1))}[producer]
  w_q, w_s = quantize_rows(jax.random.normal(jax.random.key(1), (48, 96)))
  y = fp8_linear(src, w_q, w_s)
  assert y.shape == (2, 5, 48) and y.dtype == jnp.bfloat16
  if not backend.on_hopper():
    x_q, x_s = quantize_activations_reference(src)
    ref = fp8_linear_reference(x_q.reshape(10, 96), x_s.reshape(10), w_q, w_s)
    chex.assert_trees_all_equal(y, ref.reshape(2, 5, 48))


def test_entry_point_quantizes_the_gemm_tiles_rows_interpret(monkeypatch):
  """Where the Mosaic GEMM runs, the quantize pass writes the rows of its 64-row tile (10
  tokens and 54 zero rows), so the program pads nothing: no pad op, one quantize call for
  [64, K]; the 10 rows as the reference's. 32-token decode steps had two padding passes
  a linear (x_q, x_scale) that the GPU waited on the host for."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 256), jnp.bfloat16)
  src = RMSNormOf(x, jnp.linspace(0.5, 2.0, 256))
  w_q, w_s = quantize_rows(jax.random.normal(jax.random.key(1), (64, 256)) * 0.05)
  calls = []  # the quantize pass as constants, so that a pad in the program is the GEMM's
  quantized = {r: quantize_activations_reference(src, pad_rows=r) for r in (10, 64)}
  monkeypatch.setattr(fp8_linear_module, "quantize_activations",
                      lambda a, **kw: calls.append(kw) or quantized[kw["pad_rows"]])
  f = lambda a: fp8_linear(a, w_q, w_s, out_dtype=jnp.float32)
  with backend.interpret():
    jaxpr = jax.make_jaxpr(f)(src)
    y = f(src)
  assert " pad[" not in str(jaxpr) and "name=_pad" not in str(jaxpr)
  assert calls[0] == {"pad_rows": 64}
  ops = (*quantized[10], w_q, w_s)
  testing.assert_within(y.reshape(10, 64), fp8_linear_reference(*ops, out_dtype=jnp.float32),
                        testing.fp8_linear_error_bound(*ops), testing.fp8_linear_rel_tol(256))
  calls.clear()
  monkeypatch.setattr(backend, "on_hopper", lambda: False)
  f(src)  # off Hopper, outside interpret mode: the reference, on the 10 rows
  assert calls == [{"pad_rows": 10}]


def test_rows_are_padded_only_to_a_tile_the_gemm_keeps():
  """per_token_linear pads M to the GEMM's row tile only where the tile the GEMM picks for
  the padded rows divides them (else the GEMM would pad again): M = 10, tiles of 64 up to
  64 rows, then 128 from 64 on (no pad) or from 65 on (pad to 64)."""
  x = jax.random.normal(jax.random.key(0), (10, 128), jnp.bfloat16)
  w_q, w_s = quantize_rows(jax.random.normal(jax.random.key(1), (64, 128)))
  seen = []

  def quantize(a, pad_rows):
    seen.append(pad_rows)
    return quantize_activations_reference(a, pad_rows=pad_rows)

  tiles = lambda last: lambda m, n, k: types.SimpleNamespace(cta_m=64 if m <= last else 128)
  with backend.interpret():
    for last in (64, 63):
      per_token_linear(fp8_linear_module.IMPLEMENTATIONS, None, x, quantize, w_q, w_s,
                       jnp.float32, tiles(last))
  assert seen == [64, 10]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["rmsnorm", "swiglu"])
def test_entry_point_decode_step_rows_gpu(kind):
  """A 32-token linear through the entry point on the GPU: the Triton quantize pass writes
  the 64-row tile (no pad in the compiled program) and the result matches the reference
  GEMM of the same quantized rows within its bound."""
  k, n = 1408, 4224
  x = jax.random.normal(jax.random.key(3), (32, 1, 2 * k if kind == "swiglu" else k),
                        jnp.bfloat16)
  src = (RMSNormOf(x, jnp.linspace(0.5, 2.0, k)) if kind == "rmsnorm" else SwiGLUOf(x))
  w_q, w_s = quantize_rows(jax.random.normal(jax.random.key(4), (n, k)) * 0.05)
  f = jax.jit(lambda a: fp8_linear(a, w_q, w_s, out_dtype=jnp.float32))
  assert " pad(" not in f.lower(src).compile().as_text()
  y = testing.poisoned_call(lambda: f(src), (32, 1, n), jnp.float32)
  x_q, x_s = jax.jit(lambda a: quantize_activations(a, impl="triton"))(src)
  ops = (x_q.reshape(32, k), x_s.reshape(32), w_q, w_s)
  testing.assert_within(y.reshape(32, n), fp8_linear_reference(*ops, out_dtype=jnp.float32),
                        testing.fp8_linear_error_bound(*ops), testing.fp8_linear_rel_tol(k))


@pytest.mark.parametrize("m", [1, 32, 1000, 16384])
def test_default_config_fits(m):
  for n, k in [(1408, 1408), (4224, 1408), (1408, 5632), (11264, 1408)]:
    cfg = default_config(m, n, k)
    assert cfg.tile_k == 128 and cfg.tile_m in (64, 128)
    assert cfg.tile_n % min(cfg.epi_tile_n, cfg.tile_n) == 0
    assert (k // 128) % cfg.k_splits == 0 and (cfg.k_splits == 1 or m <= 64)


def test_default_config_splits_k_for_few_column_tiles(monkeypatch):
  monkeypatch.setattr(backend, "num_sms", lambda: 132)
  assert default_config(32, 1408, 1408).k_splits == 1  # 11 K blocks: too short
  assert default_config(32, 1408, 1408).tile_n == 32  # narrow columns instead
  assert default_config(32, 1408, 5632).k_splits == 11  # 11 x 11 >= 99 SMs
  assert default_config(32, 11264, 1408).tile_n == 64  # 88 column tiles of 128
  assert default_config(32, 14336, 1792).k_splits == 1  # 112 column tiles fill the SMs


def test_default_config_halves_the_ctas_that_leave_most_sms_idle(monkeypatch):
  """A few requests' decode step (Qwen3-1.7B, 256 beams): 128x128 CTAs that would not fill
  half of the 132 SMs become 64x128 ones, twice as many; 192 CTAs stay as they are."""
  monkeypatch.setattr(backend, "num_sms", lambda: 132)
  narrow = core.Config(tile_m=64, tile_n=64, wg_dimension="n", max_concurrent_steps=4)
  assert default_config(256, 4096, 2048) == narrow  # qkv: 2 x 32 = 64 CTAs
  assert default_config(256, 2048, 2048) == narrow  # o: 32
  assert default_config(256, 2048, 6144) == narrow  # down: 32
  assert default_config(256, 12288, 2048).tile_n == 128  # gate_up: 192
  assert default_config(1024, 2048, 2048).tile_n == 128  # o at 4 requests: 128
  assert default_config(512, 1408, 1408) == narrow  # moe-4b o, one request: 44


# moe-4b and 1B Linear shapes (K, N) at the benchmark's M.
GPU_SHAPES = [(1408, 4224), (1408, 1408), (1408, 11264), (5632, 1408), (1792, 5376),
              (7168, 1792)]


@pytest.mark.gpu
@pytest.mark.parametrize("m", [16384, 32])
@pytest.mark.parametrize("k,n", GPU_SHAPES)
def test_pallas_benchmark_shapes_gpu(m, k, n):
  ops = _operands(jax.random.key(m + k + n), m, n, k)
  f = jax.jit(lambda *a: fp8_linear_pallas(*a, out_dtype=jnp.float32))
  out = testing.poisoned_call(lambda: f(*ops), (m, n), jnp.float32)
  _check(ops, out, k)
  out16 = testing.poisoned_call(lambda: jax.jit(fp8_linear_pallas)(*ops), (m, n),
                                jnp.bfloat16)
  _check_bf16(ops, out16, k)


@pytest.mark.gpu
@pytest.mark.parametrize("k,n", [(2048, 4096), (2048, 2048), (2048, 12288), (6144, 2048)])
def test_pallas_qwen3_decode_shapes_gpu(k, n):
  """Qwen3-1.7B's linears at one request's decode step (256 beams), at the default tiling
  (64x128 CTAs where 128x128 ones would not fill half the SMs)."""
  ops = _operands(jax.random.key(k + n), 256, n, k)
  out = testing.poisoned_call(lambda: jax.jit(lambda *a: fp8_linear_pallas(
      *a, out_dtype=jnp.float32))(*ops), (256, n), jnp.float32)
  _check(ops, out, k)


def _check_bf16(operands, out16, k):
  """A bf16 output is the FP32 result rounded once: within the FP32 bound plus half a
  bf16 ulp (2^-8 relative) of it."""
  ref = fp8_linear_reference(*operands, out_dtype=jnp.float32)
  bound = testing.fp8_linear_error_bound(*operands)
  testing.assert_within(out16, ref, bound + 2.0**-8 * (jnp.abs(ref) + bound),
                        testing.fp8_linear_rel_tol(k) + 2.0**-8)


def _nan_rows(key, m, n, k):
  """Operands whose x rows 7 and 9 hold a NaN and an Inf: by the quantizer's rule their
  scales are NaN (docs/fp8.md), and so must their output rows be."""
  x = jax.random.normal(key, (m, k), jnp.float32).at[7, 3].set(jnp.nan).at[9, 0].set(jnp.inf)
  w = jax.random.normal(jax.random.fold_in(key, 1), (n, k), jnp.float32) * 0.05
  return (*quantize_rows(x), *quantize_rows(w))


def _assert_nan_rows(out):
  out = np.asarray(out.astype(jnp.float32))
  assert np.all(np.isnan(out[[7, 9]])) and np.all(np.isfinite(np.delete(out, [7, 9], 0)))


def test_nan_input_is_not_hidden_interpret():
  ops = _nan_rows(jax.random.key(5), 64, 64, 256)
  with plgpu.force_gpu_interpret_mode():
    _assert_nan_rows(fp8_linear_pallas(*ops, config=SMALL))
  _assert_nan_rows(fp8_linear_reference(*ops))


@pytest.mark.gpu
def test_nan_input_is_not_hidden_gpu():
  _assert_nan_rows(jax.jit(fp8_linear_pallas)(*_nan_rows(jax.random.key(5), 256, 256, 256)))


def test_each_distinct_kernel_is_lowered_once():
  """Many call sites of one kernel configuration lower it once (the program calls one
  jitted body), so compile time does not grow with the model's depth; another
  configuration is a second body."""
  x_q, x_s = quantize_rows(jax.random.normal(jax.random.key(0), (64, 256)))
  w_q, w_s = quantize_rows(jax.random.normal(jax.random.key(1), (128, 256)))
  small = core.Config(tile_m=64, tile_n=64, max_concurrent_steps=2)
  other = core.Config(tile_m=64, tile_n=128, max_concurrent_steps=2)

  def layers(x_q, x_s, w_q, w_s):
    ys = [fp8_linear_pallas(x_q, x_s, w_q, w_s, config=small) for _ in range(6)]
    return ys + [fp8_linear_pallas(x_q, x_s, w_q, w_s, config=other)]

  with plgpu.force_gpu_interpret_mode():
    text = jax.jit(layers).lower(x_q, x_s, w_q, w_s).as_text()
  assert text.count("func.func private @gemm") == 2, "one body per distinct kernel"
  assert text.count("call @gemm") == 7


@pytest.mark.parametrize("m,k,n", [(16384, 1408, 11264), (256, 2048, 2048)])
def test_benchmark_tilings_lower_for_hopper(m, k, n):
  """Every tiling the benchmark times (the default, wider and narrower CTAs, K-split
  CTAs at Qwen3's 256-row decode) compiles to Mosaic GPU within the shared memory
  at moe-4b's largest linear and Qwen3-1.7B's o projection; lowering needs no GPU."""
  s = jax.ShapeDtypeStruct
  args = (s((m, k), jnp.float8_e4m3fn), s((m,), jnp.float32), s((n, k), jnp.float8_e4m3fn),
          s((n,), jnp.float32))
  for cfg in bench_fp8_linear.candidate_configs(m, n, k).values():
    jax.jit(lambda *a, cfg=cfg: fp8_linear_pallas(*a, config=cfg)).trace(*args).lower(
        lowering_platforms=("cuda",))
