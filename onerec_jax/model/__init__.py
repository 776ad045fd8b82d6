"""The OneRec-V2 Flax model and its FP8 rule set."""

from onerec_jax.model.fp8_rules import default_rules
from onerec_jax.model.layers import GroupedLinear, Linear, RMSNorm, SwiGLU
from onerec_jax.model.onerec import (
    Context,
    OneRecV2,
    Past,
    extend,
    init_params,
)

__all__ = ["Context", "GroupedLinear", "Linear", "OneRecV2", "Past", "RMSNorm", "SwiGLU",
           "default_rules", "extend", "init_params"]
