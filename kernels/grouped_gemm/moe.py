"""The routed experts of one MoE layer around the grouped-GEMM kernels: sort by expert,
gather (+ 1x128 quantization), gate/up GEMM, SwiGLU (+ re-quantization), down GEMM,
gate-weighted combine. The elementwise steps are left to XLA, which fuses each into the
gather or the GEMM output pass it follows."""

import jax
import jax.numpy as jnp

from onerec_kernels.grouped_gemm.pallas import fp8_grouped_gemm_pallas, grouped_gemm_pallas
from onerec_kernels.grouped_gemm.routing import combine, sort_by_expert
from onerec_kernels.quantize.reference import quantize_blocks


def routed_experts(x: jax.Array, ids: jax.Array, gates: jax.Array, w_gate_up: jax.Array,
                   w_down: jax.Array, *, gate_up_scale: jax.Array | None = None,
                   down_scale: jax.Array | None = None) -> jax.Array:
  """SwiGLU experts on the Pallas kernels, FP8 when the weight scales are given.

  x: [T, D], ids / gates: [T, k], w_gate_up: [E, 2F, D] laid out [gate; up],
  w_down: [E, D, F]; FP8 weights with 128x128 block scales [E, Nb, Kb] -> [T, D] FP32.
  """
  e, top_k = w_gate_up.shape[0], ids.shape[1]
  order, group_sizes = sort_by_expert(ids, e)
  rows = x[order // top_k]  # [T*k, D], sorted by expert

  def gemm(a, w, scale):
    if scale is None:
      return grouped_gemm_pallas(a, w, group_sizes, out_dtype=x.dtype)
    a_q, a_scale = quantize_blocks(a, 1, 128)
    return fp8_grouped_gemm_pallas(a_q, a_scale, w, scale, group_sizes, out_dtype=x.dtype)

  gate, up = jnp.split(gemm(rows, w_gate_up, gate_up_scale), 2, axis=-1)  # [T*k, F] each
  y = gemm(jax.nn.silu(gate) * up, w_down, down_scale)  # [T*k, D]
  return combine(y, order, gates)
