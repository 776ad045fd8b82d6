"""Matmuls of weights quantized in the formats that have no GEMM kernel here (INT4 and FP4
weights, MXFP8, FP8 e5m2, per-tensor scales): one implementations table each, whose
reference dequantizes and multiplies in FP32. A kernel that dequantizes 4-bit weights
inside its main loop would register before the reference; none exists yet
(docs/frontier.md)."""

from onerec_kernels import backend
from onerec_kernels.dequant_gemm.reference import (activation_fp32,
                                                   dequant_grouped_gemm_reference,
                                                   dequant_linear_reference)
from onerec_kernels.quantize.activations import Activation, activation_dtype
from onerec_kernels.quantize.formats import Quantizer

IMPLEMENTATIONS = backend.Implementations("dequant_linear", {
    "reference": dequant_linear_reference,
})
GROUPED_IMPLEMENTATIONS = backend.Implementations("dequant_grouped_gemm", {
    "reference": dequant_grouped_gemm_reference,
})


def dequant_linear(x: Activation, w_value, w_scale, *, weight: Quantizer,
                   activation: Quantizer | None, out_dtype=None, impl: str | None = None):
  """x [..., K] (or its producer) times the weight w_value [N, K] quantized by `weight`,
  the activation through `activation` (None: left in its compute dtype) -> [..., N]."""
  return IMPLEMENTATIONS(impl, x, w_value, w_scale, weight=weight, activation=activation,
                         out_dtype=out_dtype or activation_dtype(x))


def dequant_grouped_gemm(x: Activation, w_value, w_scale, group_sizes, *,
                         weight: Quantizer, activation: Quantizer | None, out_dtype=None,
                         impl: str | None = None):
  """The grouped form of dequant_linear: x [M, K] sorted by group, w_value [E, N, K]."""
  return GROUPED_IMPLEMENTATIONS(impl, x, w_value, w_scale, group_sizes, weight=weight,
                                 activation=activation,
                                 out_dtype=out_dtype or activation_dtype(x))


__all__ = ["GROUPED_IMPLEMENTATIONS", "IMPLEMENTATIONS", "activation_fp32",
           "dequant_grouped_gemm", "dequant_grouped_gemm_reference", "dequant_linear",
           "dequant_linear_reference"]
