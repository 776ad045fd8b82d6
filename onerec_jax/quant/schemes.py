"""The quantized weight (QArray) and the schemes that produce and consume it.

A scheme names how a weight is quantized offline and which op runs it at apply time
(docs/fp8.md, docs/frontier.md): the paper's FP8 e4m3 schemes, INT8 W8A8, FP8 e5m2,
MXFP8, per-tensor FP8, and 4-bit weights (INT4 group-128, MXFP4) with 16-bit or FP8
activations. Everything numeric is delegated to onerec_kernels; this module only maps
scheme names to those functions and checks that a weight fits its scheme.
"""

import dataclasses
import functools
from typing import Callable

import flax.struct
import jax
import onerec_kernels.dequant_gemm as dequant_gemm_op
import onerec_kernels.fp8_linear as fp8_linear_op
import onerec_kernels.grouped_gemm as grouped_gemm_op
import onerec_kernels.int8_gemm as int8_gemm_op
from onerec_kernels.quantize import BLOCK, activation_shape, quantize_blocks, quantize_rows
from onerec_kernels.quantize.formats import E2M1, E4M3, E5M2, INT4, Quantizer

from onerec_jax.errors import InputError


class QuantizationError(InputError):
  """Rules that are malformed or do not fit a parameter tree; the message says which."""


@flax.struct.dataclass
class QArray:
  """A quantized weight: value in the original K-major layout ([N, K] or [E, N, K]) in
  the scheme's element dtype (float8_e4m3fn, int8, ...), 4-bit values (int4, e2m1)
  packed two to a byte as uint8 [..., ceil(K/2)] (Quantizer.pack, so that shape is the
  stored one), and its scale (FP32, or float8_e8m0fnu for the MX formats): [N] per
  channel, [E, ceil(N/BLOCK), ceil(K/BLOCK)] for FP8 blocks, [..., ceil(K/g)] for 1 x g
  groups, [] per tensor."""

  value: jax.Array
  scale: jax.Array

  @property
  def shape(self) -> tuple[int, ...]:
    return self.value.shape


# A module's call under a scheme: op(x, value, scale, *rest_of_call_args, out_dtype=)
# replaces __call__(x, *rest_of_call_args).
Op = Callable[..., jax.Array]
_DESC = {2: "[N, K]", 3: "[E, N, K]"}


@dataclasses.dataclass(frozen=True)
class Scheme:
  """How a matched module's weight is quantized and which op its __call__ becomes, by the
  weight's rank: 2 for Linear ([N, K]), 3 for GroupedLinear ([E, N, K], the call passes
  group_sizes)."""

  name: str
  quantize: Callable[[jax.Array], tuple[jax.Array, jax.Array]]
  ops: dict[int, tuple[str, Op]]  # weight rank -> (op name, op)

  @property
  def weight_desc(self) -> str:
    return " or ".join(_DESC[r] for r in self.ops)


def _dequant_scheme(name: str, weight: Quantizer, activation: Quantizer | None) -> Scheme:
  """A scheme run by the dequantize-and-multiply references (onerec_kernels.dequant_gemm)
  for Linear and GroupedLinear alike."""
  kw = dict(weight=weight, activation=activation)
  return Scheme(name, weight.quantize_packed, {
      2: ("dequant_linear", functools.partial(dequant_gemm_op.dequant_linear, **kw)),
      3: ("dequant_grouped_gemm",
          functools.partial(dequant_gemm_op.dequant_grouped_gemm, **kw))})


FP8_TOKEN = dequant_gemm_op.PER_TOKEN_FP8  # the paper's per-token e4m3 activations
INT4_GROUP = 128
MX_BLOCK = 32  # OCP MX block along K


def _schemes(*schemes: Scheme) -> dict[str, Scheme]:
  return {s.name: s for s in schemes}


SCHEMES: dict[str, Scheme] = _schemes(
    # The paper's FP8 e4m3 (docs/fp8.md).
    Scheme("per_channel", quantize_rows, {2: ("fp8_linear", fp8_linear_op.fp8_linear)}),
    Scheme("block", lambda w: quantize_blocks(w, BLOCK, BLOCK),
           {3: ("fp8_grouped_gemm", grouped_gemm_op.fp8_grouped_gemm)}),
    # INT8 W8A8: per-channel weights, per-token activations, int32 accumulation.
    Scheme("int8", int8_gemm_op.PER_CHANNEL.quantize,
           {2: ("int8_linear", int8_gemm_op.int8_linear),
            3: ("int8_grouped_gemm", int8_gemm_op.int8_grouped_gemm)}),
    # FP8 variants: one scale per tensor (weight and activation), e5m2, MXFP8.
    _dequant_scheme("fp8_tensor", Quantizer(E4M3, tensor=True), Quantizer(E4M3, tensor=True)),
    _dequant_scheme("e5m2", Quantizer(E5M2), Quantizer(E5M2)),
    _dequant_scheme("mxfp8", Quantizer(E4M3, MX_BLOCK, power_of_two=True),
                    Quantizer(E4M3, MX_BLOCK, power_of_two=True)),
    # 4-bit weights with 16-bit (W4A16) or per-token FP8 e4m3 (W4A8) activations.
    _dequant_scheme("int4_w4a16", Quantizer(INT4, INT4_GROUP), None),
    _dequant_scheme("int4_w4a8", Quantizer(INT4, INT4_GROUP), FP8_TOKEN),
    _dequant_scheme("mxfp4_w4a16", Quantizer(E2M1, MX_BLOCK, power_of_two=True), None),
    _dequant_scheme("mxfp4_w4a8", Quantizer(E2M1, MX_BLOCK, power_of_two=True), FP8_TOKEN),
    _dequant_scheme("int4_tensor", Quantizer(INT4, tensor=True), None),
)
NONE = "none"  # the scheme of modules left in the compute dtype
SCHEME_NAMES = (*SCHEMES, NONE)


def quantize_weight(weight: jax.Array, scheme: str) -> QArray:
  """Quantizes one weight with the named scheme; its shape must fit the scheme."""
  s = SCHEMES[scheme]
  if len(weight.shape) not in s.ops:
    raise ValueError(f"scheme {scheme!r} needs a {s.weight_desc} weight, got shape "
                     f"{tuple(weight.shape)}")
  return QArray(*s.quantize(weight))


def quantized_matmul(scheme: str, x: jax.Array, weight: QArray, *args, out_dtype,
                     producer=None, **kwargs) -> jax.Array:
  """The scheme's op on x and a quantized weight, with the rest of the module's call
  arguments (group_sizes for a GroupedLinear); x is first cast to out_dtype, the compute
  dtype, as the unquantized module does. producer (the RMSNormOf / SwiGLUOf / RowsOf that
  computed x), when given, replaces x: the op fuses it into its activation
  quantization."""
  if producer is not None and activation_shape(producer) != x.shape:
    raise ValueError(f"producer computes shape {activation_shape(producer)}, but the "
                     f"module's input has shape {x.shape}")
  src = x.astype(out_dtype) if producer is None else producer
  _, op = SCHEMES[scheme].ops[len(weight.shape)]
  return op(src, weight.value, weight.scale, *args, **kwargs, out_dtype=out_dtype)
