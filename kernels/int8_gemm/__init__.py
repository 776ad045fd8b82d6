"""INT8 W8A8 matmuls: per-channel int8 weights, per-token int8 activations quantized at
run time (from the activation or the producer that computes it), int32 accumulation;
the Pallas kernels on Hopper, the references elsewhere."""

import jax

from onerec_kernels import backend
from onerec_kernels.int8_gemm.pallas import (default_grouped_config, default_linear_config,
                                             int8_grouped_gemm_pallas, int8_linear_pallas)
from onerec_kernels.int8_gemm.reference import (int8_grouped_gemm_reference,
                                                int8_linear_reference)
from onerec_kernels.quantize import Activation, activation_dtype
from onerec_kernels.quantize.activations import (check_activation, evaluate_rows,
                                                 per_token_linear)
from onerec_kernels.quantize.formats import INT8, Quantizer

PER_TOKEN = PER_CHANNEL = Quantizer(INT8)  # scale = amax * fl32(1/127) per row


# After the activation's quantization: x_q [M, K], x_scale [M], w_q [N, K], w_scale [N].
IMPLEMENTATIONS = backend.Implementations("int8_linear", {
    "mosaic": backend.hopper_kernel("the Mosaic GPU INT8 linear", int8_linear_pallas),
    "reference": int8_linear_reference,
})
# x_q [M, K], x_scale [M], w_q [E, N, K], w_scale [E, N], group_sizes [E].
GROUPED_IMPLEMENTATIONS = backend.Implementations("int8_grouped_gemm", {
    "mosaic": backend.hopper_kernel("the Mosaic GPU INT8 grouped GEMM",
                                    int8_grouped_gemm_pallas),
    "reference": int8_grouped_gemm_reference,
})


def quantize_activations_int8(x: Activation, *, pad_rows: int | None = None
                              ) -> tuple[jax.Array, jax.Array]:
  """Per-token int8 quantization of the activation x is or computes, in FP32 without a
  16-bit intermediate (XLA; no fused kernel yet) -> (value [..., K] int8, scale [...]);
  pad_rows as quantize_activations'."""
  check_activation(x, pad_rows)
  return PER_TOKEN.quantize(evaluate_rows(x, pad_rows))


def int8_linear(x: Activation, w_q, w_scale, *, out_dtype=None, impl: str | None = None):
  """x [..., K] (or its producer) quantized per token to int8, times w_q [N, K] int8 with
  w_scale [N] -> [..., N] in out_dtype (default: x's dtype). impl: None ("mosaic" on a
  Hopper GPU, then "reference") or one of them."""
  return per_token_linear(IMPLEMENTATIONS, impl, x, quantize_activations_int8, w_q, w_scale,
                          out_dtype, default_linear_config)


def int8_grouped_gemm(x: Activation, w_q, w_scale, group_sizes, *, out_dtype=None,
                      impl: str | None = None):
  """x [M, K] sorted by group (or its producer) quantized per token to int8, times the
  group's w_q [E, N, K] int8 with w_scale [E, N] -> [M, N]. impl as int8_linear."""
  out_dtype = out_dtype or activation_dtype(x)
  x_q, x_scale = quantize_activations_int8(x)
  return GROUPED_IMPLEMENTATIONS(impl, x_q, x_scale, w_q, w_scale, group_sizes,
                                 out_dtype=out_dtype)


__all__ = ["GROUPED_IMPLEMENTATIONS", "IMPLEMENTATIONS", "PER_CHANNEL", "PER_TOKEN",
           "default_grouped_config", "default_linear_config", "int8_grouped_gemm",
           "int8_grouped_gemm_pallas", "int8_grouped_gemm_reference", "int8_linear",
           "int8_linear_pallas", "int8_linear_reference", "quantize_activations_int8"]
