"""Grouped GEMM for MoE experts: reference, Pallas kernels, the routing permutation, and
the entry points that pick the backend."""

import jax

from onerec_kernels import backend
from onerec_kernels.grouped_gemm.pallas import fp8_grouped_gemm_pallas, grouped_gemm_pallas
from onerec_kernels.grouped_gemm.reference import (
    fp8_grouped_gemm_reference,
    grouped_gemm_reference,
    row_groups,
)
from onerec_kernels.grouped_gemm.routing import combine, sort_by_expert
from onerec_kernels.quantize import BLOCK, Activation, activation_dtype, quantize_activations


def _mosaic_16bit(x, w, group_sizes, *, out_dtype):
  backend.require_hopper("the Mosaic GPU grouped GEMM")
  if x.dtype.itemsize != 2:
    raise backend.Unsupported(f"the Mosaic GPU grouped GEMM takes 16-bit operands, not "
                              f"{x.dtype}")
  return grouped_gemm_pallas(x, w, group_sizes, out_dtype=out_dtype)


IMPLEMENTATIONS = backend.Implementations("grouped_gemm", {
    "mosaic": _mosaic_16bit,
    "reference": grouped_gemm_reference,
})
# After the activation's quantization: x_q [M, K], x_scale [M, Kb], w_q [E, N, K],
# w_scale [E, Nb, Kb], group_sizes [E] -> [M, N].
FP8_IMPLEMENTATIONS = backend.Implementations("fp8_grouped_gemm", {
    "mosaic": backend.hopper_kernel("the Mosaic GPU FP8 grouped GEMM",
                                    fp8_grouped_gemm_pallas),
    "reference": fp8_grouped_gemm_reference,
})


def grouped_gemm(x: jax.Array, w: jax.Array, group_sizes: jax.Array, *, out_dtype=None,
                 impl: str | None = None) -> jax.Array:
  """y[m] = x[m] @ w[group(m)].T. x [M, K] sorted by group, w [E, N, K] -> [M, N].

  The one entry point the model's experts call. impl: None (the table's order: "mosaic",
  the Pallas kernel on a Hopper GPU for 16-bit operands, then "reference"), or one of them.
  """
  return IMPLEMENTATIONS(impl, x, w, group_sizes, out_dtype=out_dtype or x.dtype)


def fp8_grouped_gemm(x: Activation, w_q, w_scale, group_sizes, *, out_dtype=None,
                     impl: str | None = None):
  """Quantizes x [M, K] (an array, or the SwiGLUOf / RowsOf that computes it, fused in)
  in 1 x BLOCK blocks, then the block-scaled FP8 grouped GEMM with w_q [E, N, K] fp8 and
  w_scale [E, ceil(N/BLOCK), ceil(K/BLOCK)] -> [M, N].

  The entry point the experts call under FP8 rules. impl picks the GEMM: None ("mosaic",
  then "reference"), or one of them.
  """
  out_dtype = out_dtype or activation_dtype(x)
  x_q, x_scale = quantize_activations(x, block=BLOCK)
  return FP8_IMPLEMENTATIONS(impl, x_q, x_scale, w_q, w_scale, group_sizes,
                             out_dtype=out_dtype)


__all__ = ["FP8_IMPLEMENTATIONS", "IMPLEMENTATIONS", "combine", "fp8_grouped_gemm",
           "fp8_grouped_gemm_pallas", "fp8_grouped_gemm_reference", "grouped_gemm",
           "grouped_gemm_pallas", "grouped_gemm_reference", "row_groups", "sort_by_expert"]
