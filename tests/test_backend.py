"""One backend mechanism for every kernel entry point: the implementations table, its
order of fallback, the kernel mode (ONEREC_KERNELS or use()), and beam_search's cache
keyed on the mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import onerec_kernels.attention  # noqa: F401  (registers its table)
import onerec_kernels.dequant_gemm  # noqa: F401 (registers its tables)
import onerec_kernels.fp8_linear as fp8_linear_op
import onerec_kernels.grouped_gemm as grouped_gemm_op
import onerec_kernels.int8_gemm  # noqa: F401
import onerec_kernels.topk as topk_op
from onerec_kernels import backend
from onerec_kernels.quantize import (quantize_activations, quantize_activations_reference,
                                     quantize_blocks, quantize_rows)

# Every kernel entry point of the product and its table.
ENTRY_POINTS = {"quantize_activations", "fp8_linear", "grouped_gemm", "fp8_grouped_gemm",
                "top_k", "beam_topk", "router_topk", "attention", "int8_linear",
                "int8_grouped_gemm", "dequant_linear", "dequant_grouped_gemm"}


def _table(calls, **kw):
  """A throwaway table (not registered under a real op name twice)."""
  def impl(name, error=None):
    def run(x):
      calls.append(name)
      if error:
        raise backend.Unsupported(error)
      return name
    return run
  name = f"test_op_{len(backend.tables())}"
  return backend.Implementations(name, {
      "fast": impl("fast", kw.get("fast_error")), "alt": impl("alt"),
      "reference": impl("reference")}, **{k: v for k, v in kw.items() if k != "fast_error"})


def test_unknown_mode_is_an_error(monkeypatch):
  monkeypatch.setenv(backend.ENV, "fast")
  with pytest.raises(ValueError, match=r"ONEREC_KERNELS='fast': must be one of"):
    backend.mode()
  with pytest.raises(ValueError, match=r"kernel mode='xla': must be one of"):
    with backend.use("xla"):
      pass


def test_default_order_falls_back_past_unsupported():
  calls = []
  table = _table(calls, fast_error="not here")
  assert table(None, 1) == "alt" and calls == ["fast", "alt"]
  with pytest.raises(backend.Unsupported, match="not here"):  # named: its error surfaces
    table("fast", 1)
  with pytest.raises(ValueError, match=r"impl='nope'; known: \['fast', 'alt', 'reference'\]"):
    table("nope", 1)


def test_explicit_and_prefer_leave_the_default_order():
  calls = []
  table = _table(calls, explicit=("alt",), prefer={"fast": lambda x: x > 0})
  assert table.order(None) == ("fast", "reference")
  assert table(None, 1) == "fast"
  assert table(None, -1) == "reference"  # not preferred for this input
  assert table("alt", -1) == "alt"  # still runs when named


def test_after_runs_the_rest_of_the_default_order():
  """An implementation handing inputs on at run time: the implementations after it, with
  their preferences, whatever the mode pins."""
  calls = []
  table = _table(calls, prefer={"alt": lambda x: x > 0})
  assert table.after("fast", 1) == "alt" and calls == ["alt"]
  assert table.after("fast", -1) == "reference"  # alt not preferred for this input
  assert table.after("alt", 1) == "reference"
  with backend.use(f"auto,{table.op}=fast"):
    assert table.after("fast", 1) == "alt"


def test_reference_must_come_last():
  with pytest.raises(ValueError, match="the reference must come last"):
    backend.Implementations("test_bad_order", {"reference": abs, "fast": abs})


def test_every_entry_point_has_one_table_and_honours_the_mode(monkeypatch):
  assert ENTRY_POINTS <= set(backend.tables())
  with backend.use("reference"):
    for name in ENTRY_POINTS:
      assert backend.tables()[name].order(None) == ("reference",), name
  monkeypatch.setenv(backend.ENV, "reference")
  assert backend.mode() == "reference"
  with backend.use("auto"):  # the innermost setting wins, and is restored after
    assert backend.mode() == "auto"
  assert backend.mode() == "reference"
  for name in ENTRY_POINTS:
    assert backend.tables()[name].order(None) == ("reference",), name


def test_reference_mode_pins_the_entry_points_even_on_hopper(monkeypatch):
  """With the mode set, the entry points return the references' results even where the
  fast kernels would run (on_hopper and jax_triton forced true)."""
  monkeypatch.setattr(backend, "on_hopper", lambda: True)
  monkeypatch.setattr(backend, "triton_available", lambda: True)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((6, 256)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((2, 128, 256)), jnp.bfloat16)
  sizes = jnp.array([4, 2], jnp.int32)
  logits = jnp.asarray(rng.standard_normal((2, 8, 1100)), jnp.float32)
  with backend.use("reference"):
    np.testing.assert_array_equal(grouped_gemm_op.grouped_gemm(x, w, sizes),
                                  grouped_gemm_op.grouped_gemm_reference(x, w, sizes))
    w_q, w_s = quantize_blocks(w, 128, 128)
    x_q, x_s = quantize_blocks(x, 1, 128)
    np.testing.assert_array_equal(
        grouped_gemm_op.fp8_grouped_gemm(x, w_q, w_s, sizes),
        grouped_gemm_op.fp8_grouped_gemm_reference(x_q, x_s, w_q, w_s, sizes,
                                                   out_dtype=x.dtype))
    lw_q, lw_s = quantize_rows(w[0])
    x_q, x_s = quantize_rows(x)
    np.testing.assert_array_equal(fp8_linear_op.fp8_linear(x, lw_q, lw_s),
                                  fp8_linear_op.fp8_linear_reference(x_q, x_s, lw_q, lw_s,
                                                                     out_dtype=x.dtype))
    for a, b in zip(quantize_activations(x), quantize_activations_reference(x)):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(topk_op.beam_topk(logits, logits[..., 0], 9),
                    topk_op.beam_topk_reference(logits, logits[..., 0], 9)):
      np.testing.assert_array_equal(a, b)


def test_hopper_kernels_run_on_hopper_or_in_interpret_mode():
  assert backend.hopper_kernels() == backend.on_hopper()
  with backend.interpret():
    assert backend.hopper_kernels()
  assert backend.hopper_kernels() == backend.on_hopper()


def test_off_the_gpu_the_defaults_fall_back_to_the_references():
  """On this machine every fast implementation is unsupported: the default picks the
  reference, and naming the kernel says why it cannot run."""
  if backend.on_hopper():
    pytest.skip("a Hopper GPU runs the kernels")
  x = jnp.ones((4, 128), jnp.float32)
  for a, b in zip(quantize_activations(x), quantize_activations_reference(x)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(backend.Unsupported, match="runs on Hopper"):
    quantize_activations(x, impl="triton")
  w_q, w_s = quantize_rows(jnp.ones((128, 128)))
  with pytest.raises(backend.Unsupported, match="Mosaic GPU FP8 linear runs on Hopper"):
    fp8_linear_op.fp8_linear(x, w_q, w_s, impl="mosaic")


def test_beam_search_caches_one_executable_per_kernel_mode(monkeypatch):
  """The mode is part of beam_search's jit key: switching it retraces instead of reusing
  the other mode's executable."""
  from onerec_jax import generate as gen
  from onerec_jax.config import preset
  from onerec_jax.model import init_params
  cfg = preset("tiny")
  params = init_params(cfg, jax.random.key(0))
  f, m = gen.pad_batch(cfg, gen.random_contexts(cfg, 2), None, 0, 2, 2)
  traces = []
  real = topk_op.beam_topk
  monkeypatch.setattr(topk_op, "beam_topk",
                      lambda *a, **k: traces.append(backend.mode()) or real(*a, **k))
  for mode in ("auto", "reference", "auto", "reference"):
    with backend.use(mode):
      gen.beam_search(params, f, m, config=cfg, beam_width=4)
  # One trace per mode (3 levels each, a beam_topk per level), none on the repeats.
  assert traces == ["auto"] * 3 + ["reference"] * 3


def test_a_mode_can_pin_single_ops():
  """"auto,op=impl" pins one op and leaves the others to their default order."""
  with backend.use("auto,attention=reference,top_k=radix"):
    assert backend.tables()["attention"].order(None) == ("reference",)
    assert backend.tables()["top_k"].order(None) == ("radix",)  # explicit-only, pinned
    assert backend.tables()["fp8_linear"].order(None) == ("mosaic", "reference")
    assert not backend.reference_only()
    assert backend.tables()["top_k"].order("reference") == ("reference",)  # impl= wins
  with backend.use("reference,attention=triton"):
    assert backend.tables()["attention"].order(None) == ("triton",)
    assert backend.tables()["grouped_gemm"].order(None) == ("reference",)
  with pytest.raises(ValueError, match=r"pins of unknown ops \['atention'\]"):
    with backend.use("auto,atention=reference"):
      backend.tables()["top_k"].order(None)
  with pytest.raises(ValueError, match="optionally followed by ',op=impl' pins"):
    with backend.use("auto,attention"):
      pass
  with pytest.raises(ValueError, match=r"attention: impl='xla'; known"):
    with backend.use("auto,attention=xla"):
      backend.tables()["attention"].order(None)
