"""FP8 quantization of rows and blocks (reference in jax.numpy)."""

from onerec_kernels.quantize.reference import (
    FP8_DTYPE,
    FP8_MAX,
    dequantize_blocks,
    dequantize_rows,
    quantize_blocks,
    quantize_rows,
    scale_from_amax,
)

__all__ = ["FP8_DTYPE", "FP8_MAX", "dequantize_blocks", "dequantize_rows",
           "quantize_blocks", "quantize_rows", "scale_from_amax"]
