"""Launching Triton kernels from JAX (jax-triton), shared by every Triton GPU backend.

jax_triton is imported on first launch, not with the kernel modules, so the same
@triton.jit kernels also load where only triton is installed: CPU tests run them in
Triton's interpreter (TRITON_INTERPRET=1) on torch tensors.
"""

import functools

import jax


def triton_call(kernel, *args, out, grid, num_warps: int = 4, num_stages: int = 3,
                zeroed=(), **meta):
  """Runs a @triton.jit kernel on JAX arrays: out is a ShapeDtypeStruct or a tuple of
  them (the outputs, passed after args), zeroed the indices of outputs zero-filled first,
  num_stages the software pipelining depth of its loops, meta the kernel's constexpr
  arguments.

  Each distinct launch (kernel, shapes, grid, constexprs) is jitted on its own, so a
  program that launches it from many sites traces and lowers (compiles) it once."""
  return _launch(*args, kernel=kernel, out=out, grid=tuple(grid), num_warps=num_warps,
                 num_stages=num_stages, zeroed=tuple(zeroed),
                 meta=tuple(sorted(meta.items())))


@functools.partial(jax.jit, static_argnames=("kernel", "out", "grid", "num_warps",
                                             "num_stages", "zeroed", "meta"))
def _launch(*args, kernel, out, grid, num_warps, num_stages, zeroed, meta):
  import jax_triton as jt
  return jt.triton_call(*args, kernel=kernel, out_shape=out, grid=grid,
                        num_warps=num_warps, num_stages=num_stages, zeroed_outputs=zeroed,
                        **dict(meta))


def shape(dims, dtype) -> jax.ShapeDtypeStruct:
  """The out_shape of one output."""
  return jax.ShapeDtypeStruct(dims, dtype)
