"""FP8 post-training quantization (docs/fp8.md).

Offline, `quantize_params(params, rules)` replaces the weights that `rules` select by
QArray (quantized value, its scale); at apply time, `with fp8(rules): model.apply(...)`
runs those modules through their schemes' ops in onerec_kernels (FP8, and the formats
below it: docs/frontier.md). One model definition, one parameter
naming: without the context the model is untouched.
"""

from onerec_jax.quant.interceptor import Captured, capture, fp8
from onerec_jax.quant.params import quantize_params, weight_bytes
from onerec_jax.quant.rules import Rules
from onerec_jax.quant.schemes import (SCHEME_NAMES, QArray, QuantizationError,
                                      quantize_weight, quantized_matmul)

__all__ = ["Captured", "QArray", "QuantizationError", "Rules", "SCHEME_NAMES", "capture",
           "fp8", "quantize_params", "quantize_weight", "quantized_matmul", "weight_bytes"]
