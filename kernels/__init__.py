"""onerec_kernels: model-agnostic ops (FP8 quantization, FP8 linear, grouped GEMM, top-k).

Each op has a plain-JAX reference (its specification) and one entry point that picks the
backend. Depends on jax only.
"""
