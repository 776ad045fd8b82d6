"""Grouped GEMM for MoE experts: reference, Pallas kernels, routing permutation, and the
entry points that pick the backend."""

from onerec_kernels.backend import reference_only
from onerec_kernels.gemm_mgpu import on_hopper
from onerec_kernels.grouped_gemm.pallas import (
    BLOCK,
    fp8_grouped_gemm_pallas,
    grouped_gemm_pallas,
)
from onerec_kernels.grouped_gemm.moe import routed_experts
from onerec_kernels.grouped_gemm.reference import (
    fp8_grouped_gemm_reference,
    grouped_gemm_reference,
    row_groups,
)
from onerec_kernels.grouped_gemm.routing import combine, sort_by_expert
from onerec_kernels.quantize import Activation, activation_dtype, quantize_activations


def grouped_gemm(x, w, group_sizes, *, out_dtype=None):
  """y[m] = x[m] @ w[group(m)].T. x [M, K] sorted by group, w [E, N, K] -> [M, N].

  The one entry point the model's experts call: the Pallas kernel on a Hopper GPU for
  16-bit operands, the reference elsewhere.
  """
  if not reference_only() and on_hopper() and x.dtype.itemsize == 2:
    return grouped_gemm_pallas(x, w, group_sizes, out_dtype=out_dtype)
  return grouped_gemm_reference(x, w, group_sizes, out_dtype=out_dtype)


def fp8_grouped_gemm(x: Activation, w_q, w_scale, group_sizes, *, out_dtype=None):
  """Quantizes x [M, K] (an array, or the SwiGLUOf / RowsOf that computes it, fused in)
  in 1x128 blocks, then the block-scaled FP8 grouped GEMM with w_q [E, N, K] fp8 and
  w_scale [E, ceil(N/128), ceil(K/128)] -> [M, N].

  The entry point the experts call under FP8 rules: quantize_activations and the Pallas
  kernel on a Hopper GPU, the references elsewhere.
  """
  out_dtype = out_dtype or activation_dtype(x)
  x_q, x_scale = quantize_activations(x, block=BLOCK)
  impl = (fp8_grouped_gemm_reference if reference_only() or not on_hopper()
          else fp8_grouped_gemm_pallas)
  return impl(x_q, x_scale, w_q, w_scale, group_sizes, out_dtype=out_dtype)


__all__ = ["combine", "fp8_grouped_gemm", "fp8_grouped_gemm_pallas",
           "fp8_grouped_gemm_reference", "grouped_gemm", "grouped_gemm_pallas",
           "grouped_gemm_reference", "routed_experts", "row_groups", "sort_by_expert"]
