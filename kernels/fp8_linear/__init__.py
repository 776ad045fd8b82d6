"""FP8 linear with per-token activation and per-channel weight scales."""

from onerec_kernels.fp8_linear.pallas import default_config, fp8_linear_pallas
from onerec_kernels.fp8_linear.reference import (
    fp8_linear_dynamic_reference,
    fp8_linear_reference,
)
from onerec_kernels.backend import reference_only
from onerec_kernels.gemm_mgpu import on_hopper
from onerec_kernels.quantize.reference import quantize_rows


def fp8_linear(x, w_q, w_scale, *, out_dtype=None):
  """Dynamic per-token quantization of x [..., K] then the FP8 product with w_q [N, K].

  The one entry point the model's Linear calls under FP8 rules: the Pallas Mosaic GPU
  kernel on a Hopper GPU, the reference elsewhere.
  """
  if reference_only() or not on_hopper():
    return fp8_linear_dynamic_reference(x, w_q, w_scale, out_dtype=out_dtype)
  lead = x.shape[:-1]
  x_q, x_scale = quantize_rows(x.reshape(-1, x.shape[-1]))
  y = fp8_linear_pallas(x_q, x_scale, w_q, w_scale, out_dtype=out_dtype or x.dtype)
  return y.reshape(*lead, w_q.shape[0])


__all__ = ["default_config", "fp8_linear", "fp8_linear_dynamic_reference",
           "fp8_linear_pallas", "fp8_linear_reference"]
