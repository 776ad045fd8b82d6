"""FP8 post-training quantization (docs/fp8.md).

Offline, `quantize_params(params, rules)` replaces the weights that `rules` select by
QArray (FP8 value, FP32 scale); at apply time, `with fp8(rules): model.apply(...)` runs
those modules through the FP8 ops of onerec_kernels. One model definition, one parameter
naming: without the context the model is untouched.
"""

from onerec_jax.quant.interceptor import Captured, capture, fp8
from onerec_jax.quant.params import quantize_params
from onerec_jax.quant.rules import Rules
from onerec_jax.quant.schemes import (SCHEME_NAMES, QArray, QuantizationError,
                                      quantize_weight, quantized_matmul)

__all__ = ["Captured", "QArray", "QuantizationError", "Rules", "SCHEME_NAMES", "capture",
           "fp8", "quantize_params", "quantize_weight", "quantized_matmul"]
