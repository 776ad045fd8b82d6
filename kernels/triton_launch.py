"""Launching Triton kernels from JAX (jax-triton), shared by every Triton GPU backend.

jax_triton is imported on first launch, not with the kernel modules, so the same
@triton.jit kernels also load where only triton is installed: CPU tests run them in
Triton's interpreter (TRITON_INTERPRET=1) on torch tensors.
"""

import jax


def triton_call(kernel, *args, out, grid, num_warps: int = 4, zeroed=(), **meta):
  """Runs a @triton.jit kernel on JAX arrays: out is a ShapeDtypeStruct or a tuple of
  them (the outputs, passed after args), zeroed the indices of outputs zero-filled first,
  meta the kernel's constexpr arguments."""
  import jax_triton as jt
  return jt.triton_call(*args, kernel=kernel, out_shape=out, grid=grid,
                        num_warps=num_warps, zeroed_outputs=zeroed, **meta)


def shape(dims, dtype) -> jax.ShapeDtypeStruct:
  """The out_shape of one output."""
  return jax.ShapeDtypeStruct(dims, dtype)
