"""The OneRec-V2 Flax model and its FP8 rule set."""

from onerec_jax.model.fp8_rules import default_rules
from onerec_jax.model.layers import GroupedLinear, Linear, RMSNorm, SwiGLU
from onerec_jax.model.onerec import (
    Cache,
    Context,
    OneRecV2,
    init_cache,
    init_params,
)

__all__ = ["Cache", "Context", "GroupedLinear", "Linear", "OneRecV2", "RMSNorm", "SwiGLU",
           "default_rules", "init_cache", "init_params"]
