"""The routed experts of one MoE layer around the grouped-GEMM kernels: sort by expert,
gather (+ 1x128 quantization), gate/up GEMM, SwiGLU (+ re-quantization), down GEMM,
gate-weighted combine. In FP8 the gather and the SwiGLU run inside the quantization
kernel (quantize_activations); in 16-bit XLA fuses them into the passes they follow."""

import jax
import jax.numpy as jnp

from onerec_kernels.grouped_gemm.pallas import (BLOCK, fp8_grouped_gemm_pallas,
                                                grouped_gemm_pallas)
from onerec_kernels.grouped_gemm.routing import combine, sort_by_expert
from onerec_kernels.quantize import RowsOf, SwiGLUOf, quantize_activations


def routed_experts(x: jax.Array, ids: jax.Array, gates: jax.Array, w_gate_up: jax.Array,
                   w_down: jax.Array, *, gate_up_scale: jax.Array | None = None,
                   down_scale: jax.Array | None = None) -> jax.Array:
  """SwiGLU experts on the Pallas kernels, FP8 when the weight scales are given.

  x: [T, D], ids / gates: [T, k], w_gate_up: [E, 2F, D] laid out [gate; up],
  w_down: [E, D, F]; FP8 weights with 128x128 block scales [E, Nb, Kb] -> [T, D] FP32.
  """
  e, top_k = w_gate_up.shape[0], ids.shape[1]
  order, group_sizes = sort_by_expert(ids, e)
  if gate_up_scale is None:
    gemm = lambda a, w: grouped_gemm_pallas(a, w, group_sizes, out_dtype=x.dtype)
    h = gemm(x[order // top_k], w_gate_up)  # [T*k, 2F]
    gate, up = jnp.split(h, 2, axis=-1)
    y = gemm(jax.nn.silu(gate) * up, w_down)  # [T*k, D]
  else:
    fp8 = lambda src, w, scale: fp8_grouped_gemm_pallas(
        *quantize_activations(src, block=BLOCK), w, scale, group_sizes, out_dtype=x.dtype)
    h = fp8(RowsOf(x, order // top_k), w_gate_up, gate_up_scale)  # [T*k, 2F]
    y = fp8(SwiGLUOf(h), w_down, down_scale)  # [T*k, D]
  return combine(y, order, gates)
