"""FP8 linear with per-token activation and per-channel weight scales."""

from onerec_kernels.fp8_linear.reference import (
    fp8_linear_dynamic_reference,
    fp8_linear_reference,
)


def fp8_linear(x, w_q, w_scale, *, out_dtype=None):
  """Dynamic per-token quantization of x [..., K] then the FP8 product with w_q [N, K].

  The one entry point the model's Linear calls under FP8 rules; it picks the backend (only
  the reference exists yet).
  """
  return fp8_linear_dynamic_reference(x, w_q, w_scale, out_dtype=out_dtype)


__all__ = ["fp8_linear", "fp8_linear_dynamic_reference", "fp8_linear_reference"]
