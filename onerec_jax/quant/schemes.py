"""The quantized weight (QArray) and the schemes that produce and consume it.

A scheme names how a weight is quantized offline and which FP8 op runs it at apply time
(docs/fp8.md). Everything numeric is delegated to onerec_kernels; this module only maps
scheme names to those functions and checks that a weight fits its scheme.
"""

import dataclasses
from typing import Callable

import flax.struct
import jax
import onerec_kernels.fp8_linear as fp8_linear_op
import onerec_kernels.grouped_gemm as grouped_gemm_op
from onerec_kernels.quantize import BLOCK, activation_shape, quantize_blocks, quantize_rows

from onerec_jax.errors import InputError


class QuantizationError(InputError):
  """Rules that are malformed or do not fit a parameter tree; the message says which."""


@flax.struct.dataclass
class QArray:
  """An FP8 weight: value float8_e4m3fn in the original K-major layout ([N, K] or
  [E, N, K]) and its FP32 scale ([N] per channel, [E, ceil(N/BLOCK), ceil(K/BLOCK)]
  block)."""

  value: jax.Array
  scale: jax.Array

  @property
  def shape(self) -> tuple[int, ...]:
    return self.value.shape


@dataclasses.dataclass(frozen=True)
class Scheme:
  """How a matched module's weight is quantized and which FP8 op its __call__ becomes.

  op(x, value, scale, *rest_of_call_args, out_dtype=) replaces the module's __call__(x,
  *rest_of_call_args).
  """

  name: str
  op_name: str
  weight_desc: str
  weight_ndim: int
  quantize: Callable[[jax.Array], tuple[jax.Array, jax.Array]]
  op: Callable[..., jax.Array]


SCHEMES: dict[str, Scheme] = {
    "per_channel": Scheme("per_channel", "fp8_linear", "[N, K]", 2, quantize_rows,
                          fp8_linear_op.fp8_linear),
    "block": Scheme("block", "fp8_grouped_gemm", "[E, N, K]", 3,
                    lambda w: quantize_blocks(w, BLOCK, BLOCK),
                    grouped_gemm_op.fp8_grouped_gemm),
}
NONE = "none"  # the scheme of modules left in the compute dtype
SCHEME_NAMES = (*SCHEMES, NONE)


def quantize_weight(weight: jax.Array, scheme: str) -> QArray:
  """Quantizes one weight with the named scheme; its shape must fit the scheme."""
  s = SCHEMES[scheme]
  if len(weight.shape) != s.weight_ndim:
    raise ValueError(f"scheme {scheme!r} needs a {s.weight_desc} weight, got shape "
                     f"{tuple(weight.shape)}")
  return QArray(*s.quantize(weight))


def quantized_matmul(scheme: str, x: jax.Array, weight: QArray, *args, out_dtype,
                     producer=None, **kwargs) -> jax.Array:
  """The scheme's FP8 op on x and a quantized weight, with the rest of the module's call
  arguments (group_sizes for block); x is first cast to out_dtype, the compute dtype, as
  the unquantized module does. producer (the RMSNormOf / SwiGLUOf / RowsOf that computed
  x), when given, replaces x: the op fuses it into its activation quantization."""
  if producer is not None and activation_shape(producer) != x.shape:
    raise ValueError(f"producer computes shape {activation_shape(producer)}, but the "
                     f"module's input has shape {x.shape}")
  src = x.astype(out_dtype) if producer is None else producer
  return SCHEMES[scheme].op(src, weight.value, weight.scale, *args, **kwargs,
                            out_dtype=out_dtype)
