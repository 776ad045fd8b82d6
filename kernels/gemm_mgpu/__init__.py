"""Shared Pallas Mosaic GPU GEMM core for the FP8 linear and grouped-GEMM kernels."""

from onerec_kernels.gemm_mgpu.core import (
    Config,
    gemm,
    pad_to,
    round_up,
    rowcol_linear,
    tile_schedule,
)

__all__ = ["Config", "gemm", "pad_to", "round_up", "rowcol_linear",
           "tile_schedule"]
