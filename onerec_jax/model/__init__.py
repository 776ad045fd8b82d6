"""The OneRec-V2 Flax model."""

from onerec_jax.model.layers import GroupedLinear, Linear, RMSNorm, SwiGLU
from onerec_jax.model.onerec import (
    Cache,
    Context,
    OneRecV2,
    init_cache,
    init_params,
)

__all__ = ["Cache", "Context", "GroupedLinear", "Linear", "OneRecV2", "RMSNorm", "SwiGLU",
           "init_cache", "init_params"]
