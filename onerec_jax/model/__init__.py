"""The Flax models of both families (OneRec-V2, Qwen3) and their FP8 rule sets."""

from onerec_jax.model.family import example_inputs, init_params, model_for
from onerec_jax.model.fp8_rules import default_rules
from onerec_jax.model.layers import GroupedLinear, Linear, RMSNorm, SwiGLU
from onerec_jax.model.onerec import (
    Context,
    OneRecV2,
    Past,
    extend,
)
from onerec_jax.model.qwen3 import Qwen3

__all__ = ["Context", "GroupedLinear", "Linear", "OneRecV2", "Past", "Qwen3", "RMSNorm",
           "SwiGLU", "default_rules", "example_inputs", "extend", "init_params", "model_for"]
