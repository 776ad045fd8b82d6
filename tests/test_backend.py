"""ONEREC_KERNELS pins every kernel entry point to its reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import onerec_kernels.fp8_linear as fp8_linear_op
import onerec_kernels.grouped_gemm as grouped_gemm_op
import onerec_kernels.topk as topk_op
from onerec_kernels import backend
from onerec_kernels.quantize import activations, quantize_blocks, quantize_rows


def test_unknown_value_is_an_error(monkeypatch):
  monkeypatch.setenv(backend.ENV, "fast")
  with pytest.raises(ValueError, match=r"ONEREC_KERNELS='fast': must be one of"):
    backend.reference_only()


def test_reference_pins_the_entry_points_even_on_hopper(monkeypatch):
  """With the switch set, the entry points take the reference even where the Pallas
  kernels would run (on_hopper forced true): their results equal the references."""
  monkeypatch.setenv(backend.ENV, "reference")
  monkeypatch.setattr(fp8_linear_op, "on_hopper", lambda: True)
  monkeypatch.setattr(grouped_gemm_op, "on_hopper", lambda: True)
  monkeypatch.setattr(activations, "on_hopper", lambda: True)
  monkeypatch.setattr(activations.triton_launch, "available", lambda: True)
  assert backend.reference_only()
  assert activations._pick(None) == "reference"
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((6, 256)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((2, 128, 256)), jnp.bfloat16)
  sizes = jnp.array([4, 2], jnp.int32)
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
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert topk_op._pick(None, jnp.float32, 1 << 20) == "reference"
