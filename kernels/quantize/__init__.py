"""FP8 quantization: the specification (rows and blocks, reference.py) and the fused
activation quantization every FP8 matmul input goes through (activations.py)."""

from onerec_kernels.quantize.activations import (
    IMPLEMENTATIONS,
    Activation,
    Producer,
    RMSNormOf,
    RowsOf,
    SwiGLUOf,
    activation_dtype,
    activation_shape,
    evaluate_fp32,
    quantize_activations,
    quantize_activations_reference,
)
from onerec_kernels.quantize.reference import (
    BLOCK,
    FP8_DTYPE,
    FP8_MAX,
    dequantize_blocks,
    dequantize_rows,
    quantize_blocks,
    quantize_rows,
    scale_from_amax,
)

__all__ = ["Activation", "BLOCK", "FP8_DTYPE", "FP8_MAX", "IMPLEMENTATIONS", "Producer",
           "RMSNormOf", "RowsOf", "SwiGLUOf",
           "activation_dtype", "activation_shape", "dequantize_blocks", "dequantize_rows",
           "evaluate_fp32", "quantize_activations", "quantize_activations_reference",
           "quantize_blocks", "quantize_rows", "scale_from_amax"]
