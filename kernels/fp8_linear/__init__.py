"""FP8 linear with per-token activation and per-channel weight scales."""

from onerec_kernels import backend
from onerec_kernels.fp8_linear.pallas import default_config, fp8_linear_pallas
from onerec_kernels.fp8_linear.reference import fp8_linear_reference
from onerec_kernels.quantize import Activation, quantize_activations
from onerec_kernels.quantize.activations import per_token_linear


# The GEMM after the activation's quantization: x_q [M, K], x_scale [M], w_q [N, K],
# w_scale [N] -> [M, N].
IMPLEMENTATIONS = backend.Implementations("fp8_linear", {
    "mosaic": backend.hopper_kernel("the Mosaic GPU FP8 linear", fp8_linear_pallas),
    "reference": fp8_linear_reference,
})


def fp8_linear(x: Activation, w_q, w_scale, *, out_dtype=None, impl: str | None = None):
  """Per-token FP8 quantization of x [..., K] (an array, or the RMSNormOf / SwiGLUOf that
  computes it, fused into the quantization), then the FP8 product with w_q [N, K] ->
  [..., N] in out_dtype (default: x's dtype).

  The one entry point the model's Linear calls under FP8 rules. impl picks the GEMM:
  None (the table's order: "mosaic", the Pallas Mosaic GPU kernel on a Hopper GPU, then
  "reference"), or one of them.
  """
  return per_token_linear(IMPLEMENTATIONS, impl, x, quantize_activations, w_q, w_scale,
                          out_dtype, default_config)


__all__ = ["IMPLEMENTATIONS", "default_config", "fp8_linear", "fp8_linear_pallas",
           "fp8_linear_reference"]
