"""Scaling the beam search out over a device mesh (docs/scaling.md).

A mesh has the axes DATA and EXPERT. Requests are split over all its devices: each
device runs whole requests, every beam of a request on the device that holds it, through
one program (jax.shard_map inside one jit: the custom-call kernels run per device, on
local shapes, with no partitioner in between). Weights are replicated, except that with
expert parallelism (an EXPERT axis of more than one device) each MoE layer's routed
experts are split over EXPERT, padded to a multiple of its size, and the MoE layers
exchange tokens over it (onerec_jax.model.expert_parallel). Results come back
replicated, gathered in request order. Several processes (hosts) join one mesh through
jax.distributed (initialize_hosts); every process then passes the same requests and
gets every result.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from onerec_jax.config import Config
from onerec_jax.generate.items import GenerateInputError
from onerec_jax.model.expert_parallel import (ROUTED_EXPERTS, experts_per_shard,
                                              experts_sharded_over)

DATA, EXPERT = "data", "expert"
AXES = (DATA, EXPERT)


class MeshError(GenerateInputError):
  """A device count or mesh that does not fit this machine or this model."""


def make_mesh(devices: int | Sequence[jax.Device] | None = None, *,
              expert_parallel: int = 1) -> Mesh:
  """A (DATA, EXPERT) mesh: `devices` (a count, the first that many of jax.devices();
  default all of them) as devices / expert_parallel groups of expert_parallel devices,
  each group sharing every MoE layer's routed experts (1: no expert parallelism)."""
  available = jax.devices()
  if devices is None:
    devices = available
  elif isinstance(devices, int):
    if not 1 <= devices <= len(available):
      raise MeshError(f"devices={devices}: this run has {len(available)} "
                      f"{available[0].platform} device(s)")
    devices = available[:devices]
  devices = list(devices)
  if not devices:
    raise MeshError("devices: an empty list")
  if (not isinstance(expert_parallel, int) or expert_parallel < 1
      or len(devices) % expert_parallel):
    raise MeshError(f"expert_parallel={expert_parallel!r} must be a positive integer that "
                    f"divides the {len(devices)} devices")
  grid = np.array(devices, dtype=object).reshape(len(devices) // expert_parallel,
                                                 expert_parallel)
  return Mesh(grid, AXES)


def default_mesh() -> Mesh | None:
  """generate's mesh when none is given: every device of the run (jax.devices(): the
  local ones, and every process's after jax.distributed.initialize) when there are
  several, else None (the single-device program)."""
  return make_mesh() if len(jax.devices()) > 1 else None


def expert_shards(mesh: Mesh) -> int:
  """Devices each MoE layer's experts are split over (1: replicated)."""
  return dict(mesh.shape).get(EXPERT, 1)


def check_mesh(mesh: Mesh, config: Config) -> None:
  """Refuses (MeshError) a mesh that is not a jax Mesh over the DATA/EXPERT axes, or
  that splits experts the model does not have."""
  if not isinstance(mesh, Mesh):
    raise MeshError(f"mesh must be a jax.sharding.Mesh (generate.make_mesh builds one), "
                    f"got {type(mesh).__name__}")
  unknown = [a for a in mesh.axis_names if a not in AXES]
  if unknown:
    raise MeshError(f"mesh axes {list(mesh.axis_names)}: {unknown} unknown; the axes are "
                    f"{list(AXES)}")
  shards = expert_shards(mesh)
  if shards > 1 and not config.moe_layers:
    raise MeshError(f"expert parallelism over {shards} devices: the model has no MoE layers")
  if shards > max(config.n_routed_experts, 1):
    raise MeshError(f"expert parallelism over {shards} devices: more than the model's "
                    f"{config.n_routed_experts} routed experts")


def resolve(mesh: Mesh | None, config: Config) -> Mesh | None:
  """generate's mesh: the one given, checked against the model (check_mesh), or the
  default (default_mesh)."""
  mesh = default_mesh() if mesh is None else mesh
  if mesh is not None:
    check_mesh(mesh, config)
  return mesh


def round_buckets(buckets: Sequence[int], mesh: Mesh | None) -> tuple[int, ...]:
  """Batch buckets as multiples of the mesh's device count (each rounded up; padding rows
  are dropped from the results), without repeats."""
  n = 1 if mesh is None else mesh.size
  return tuple(sorted({-(-int(b) // n) * n for b in buckets}))


def describe(mesh: Mesh) -> dict[str, int]:
  """The mesh as the compiled program depends on it: axis name -> size."""
  return {name: int(size) for name, size in dict(mesh.shape).items()}


def _is_routed_expert(path) -> bool:
  return any(getattr(k, "key", None) == ROUTED_EXPERTS for k in path)


def layout(args: Sequence[Any], batched: Sequence[bool], mesh: Mesh) -> tuple[Any, ...]:
  """Per argument, a tree of jax.ShapeDtypeStruct with shardings: batched arguments split
  over every mesh axis along their first (request) axis; the others replicated, except
  routed-expert weights under expert parallelism, split along their first (expert) axis,
  padded to a multiple of the EXPERT axis' size. Cached per shapes: generate asks on
  every call."""
  leaves, treedef = jax.tree.flatten(tuple(args))
  avals = tuple((tuple(np.shape(x)), np.dtype(x.dtype)) for x in leaves)
  return _layout(mesh, tuple(batched), treedef, avals)


@functools.lru_cache(maxsize=256)
def _layout(mesh: Mesh, batched: tuple[bool, ...], treedef, avals) -> tuple[Any, ...]:
  shards = expert_shards(mesh)
  batch = NamedSharding(mesh, P(mesh.axis_names))
  replicated = NamedSharding(mesh, P())
  experts = NamedSharding(mesh, P(EXPERT))

  def leaf(path, x):
    shape, is_batch = x.shape, batched[path[0].idx]
    if is_batch:
      return jax.ShapeDtypeStruct(shape, x.dtype, sharding=batch)
    if shards > 1 and _is_routed_expert(path):
      shape = (experts_per_shard(shape[0], shards) * shards,) + shape[1:]
      return jax.ShapeDtypeStruct(shape, x.dtype, sharding=experts)
    return jax.ShapeDtypeStruct(shape, x.dtype, sharding=replicated)

  abstract = treedef.unflatten([jax.ShapeDtypeStruct(*a) for a in avals])
  return jax.tree_util.tree_map_with_path(leaf, abstract)


def place(tree: Any, target: Any) -> Any:
  """tree's arrays (host or device) as global arrays of target's shapes and shardings
  (from layout): unchanged where they already are; a longer first axis is zero-padded.
  Works across processes: each one supplies its own devices' shards."""
  def put(x, t):
    if isinstance(x, jax.Array) and x.shape == t.shape and x.sharding == t.sharding:
      return x
    src = x
    if tuple(np.shape(x)) != t.shape:  # padding experts: zeros no token is routed to
      pad = [(0, t.shape[0] - np.shape(x)[0])] + [(0, 0)] * (len(t.shape) - 1)
      src = np.pad(x, pad) if isinstance(x, np.ndarray) else jax.numpy.pad(x, pad)
    return jax.make_array_from_callback(t.shape, t.sharding, lambda index: src[index])
  return jax.tree.map(put, tree, target)


def place_params(params: Any, mesh: Mesh) -> Any:
  """params placed on the mesh as its programs take them (replicated; under expert
  parallelism the routed experts split and padded): do it once, not on every call."""
  return place(params, layout([params], [False], mesh)[0])


def place_requests(tree: Any, mesh: Mesh) -> Any:
  """Request arrays ([B, ...] each, B a multiple of the mesh's devices) split over it."""
  return place(tree, layout([tree], [True], mesh)[0])


def shard(fn: Callable, mesh: Mesh, args: Sequence[Any], batched: Sequence[bool], *,
          gather: bool = True):
  """fn(*args) -> a tuple of [B, ...] arrays, as one program over the mesh:
  (sharded_fn, target, out_sharding). target is layout(args, ...) (place the arguments
  there); sharded_fn runs fn per device on its requests (under expert parallelism, with
  the MoE layers' experts sharded over EXPERT) and returns the results in request order,
  replicated (gather; small results that every process reads) or left split over the
  devices, with out_sharding."""
  target = layout(args, batched, mesh)
  specs = jax.tree.map(lambda t: t.sharding.spec, target)
  shards = expert_shards(mesh)
  split = P(mesh.axis_names)

  def body(*local):
    with experts_sharded_over(EXPERT if shards > 1 else None):
      return fn(*local)

  sharded = jax.shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=split)
  return sharded, target, NamedSharding(mesh, P() if gather else split)


def initialize_hosts(coordinator: str, num_processes: int, process_id: int) -> None:
  """Joins this process to a run of num_processes (jax.distributed.initialize, before
  any other jax call): jax.devices() then lists every process's devices. On the CPU
  backend the collectives go through gloo (jax 0.11's default)."""
  if not 0 <= process_id < num_processes:
    raise MeshError(f"process id {process_id} outside [0, {num_processes})")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
