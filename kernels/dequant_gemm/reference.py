"""Matmuls of quantized weights in the formats without an FP8 or INT8 GEMM (INT4, FP4, MX,
e5m2, per-tensor), the specification: the weight, in its storage layout (4-bit values
packed two to a byte: Quantizer.pack), unpacked and dequantized to FP32 (value * scale,
exact for E8M0 scales), the activation quantized and dequantized the same way when the scheme
quantizes it (W4A8, W8A8 in FP8 formats) or rounded to the compute dtype when it does not
(W4A16), then one FP32 matmul (Precision.HIGHEST). This is what a kernel that dequantizes
inside its main loop computes, up to FP32 summation order."""

import jax
import jax.numpy as jnp

from onerec_kernels.grouped_gemm.reference import K_MAJOR_RAGGED
from onerec_kernels.quantize.activations import (Activation, activation_dtype,
                                                 activation_shape, evaluate_fp32)
from onerec_kernels.quantize.formats import Quantizer


def activation_fp32(x: Activation, quantizer: Quantizer | None) -> jax.Array:
  """The activation as the product sees it, in FP32: through the quantizer, or rounded to
  its compute dtype when there is none (16-bit activations)."""
  a = evaluate_fp32(x)
  if quantizer is None:
    return a.astype(activation_dtype(x)).astype(jnp.float32)
  return quantizer.round_trip(a)


def dequant_linear_reference(x: Activation, w_value: jax.Array, w_scale: jax.Array, *,
                             weight: Quantizer, activation: Quantizer | None,
                             out_dtype) -> jax.Array:
  """x [..., K] (or its producer), w_value [N, K] (packed [N, ceil(K/2)] for 4-bit
  formats) with w_scale in `weight`'s layout -> [..., N] in out_dtype."""
  a = activation_fp32(x, activation)
  w = weight.dequantize(weight.unpack(w_value, activation_shape(x)[-1]), w_scale)
  y = jnp.einsum("...k,nk->...n", a, w, preferred_element_type=jnp.float32,
                 precision=jax.lax.Precision.HIGHEST)
  return y.astype(out_dtype)


def dequant_grouped_gemm_reference(x: Activation, w_value: jax.Array, w_scale: jax.Array,
                                   group_sizes: jax.Array, *, weight: Quantizer,
                                   activation: Quantizer | None, out_dtype) -> jax.Array:
  """x [M, K] sorted by group (or its producer), w_value [E, N, K] (packed [E, N,
  ceil(K/2)] for 4-bit formats) -> [M, N]; rows past sum(group_sizes) come out zero. A
  per-token activation quantizer sees each row alone; a per-tensor one all M rows at
  once."""
  a = activation_fp32(x, activation)
  w = weight.dequantize(weight.unpack(w_value, activation_shape(x)[-1]), w_scale)
  y = jax.lax.ragged_dot_general(a, w, group_sizes.astype(jnp.int32), K_MAJOR_RAGGED,
                                 precision=jax.lax.Precision.HIGHEST,
                                 preferred_element_type=jnp.float32)
  return y.astype(out_dtype)
