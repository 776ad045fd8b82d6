"""FP8 quantization of rows and blocks (reference in jax.numpy), and RMSNorm fused with
per-token quantization."""

from onerec_kernels.quantize.fused import rmsnorm_quantize_rows

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
           "quantize_blocks", "quantize_rows", "rmsnorm_quantize_rows",
           "scale_from_amax"]
