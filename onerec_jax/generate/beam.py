"""Semantic-ID beam search: one jit-compiled function for a padded request batch.

The context processor runs once per request and its K/V are shared by the request's beams
(the model's decoder works on [B, W, T, D]); the self-attention reads each decoded
position's K/V through the beams' ancestry (model.Past), never copying it to follow them;
step 1 decodes BOS as a single beam per request; every step keeps the top W of
W * (children per beam) candidates through the kernels' top-k entry points (the fused
beam_topk when unconstrained). Everything stays on the device from the context features
to the returned triples.

Empty slots (fewer than W candidates reachable at some step) have score -inf, semantic IDs
-1 and item id -1.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import onerec_kernels.topk as topk_op
from jax.sharding import Mesh
from onerec_kernels import backend

from onerec_jax import quant
from onerec_jax.config import Config
from onerec_jax.generate import compile_cache, sharding
from onerec_jax.generate.items import ItemTable
from onerec_jax.model import extend, model_for

EMPTY = -1  # semantic and item id of an empty slot


class Beams(NamedTuple):
  """Live beams of a request batch after `level` steps."""

  scores: jax.Array  # [B, W] f32, sum of log-probabilities; -inf: empty slot
  codes: jax.Array  # [B, W, level] int32, always valid codes (0 in empty slots)
  nodes: jax.Array  # [B, W] int32, trie node of the prefix (constrained decoding only)


def _fp8_scope(rules):
  """FP8 interception, entered inside the jitted function so every trace sees it."""
  return contextlib.nullcontext() if rules is None else quant.fp8(rules)


def _top_all(beams: Beams, logits: jax.Array, beam_width: int):
  """Unconstrained: the top W of log_softmax(logits) + beam score over every (beam, code)
  through the fused beam_topk entry point -> (scores [B, W], flat index into W'*V)."""
  b, w_prev, v = logits.shape  # [B, W', V]
  scores = beams.scores
  if w_prev * v < beam_width:  # fewer candidates than slots: add empty (-inf) beams
    extra = -(-beam_width // v) - w_prev
    logits = jnp.pad(logits, ((0, 0), (0, extra), (0, 0)))
    scores = jnp.pad(scores, ((0, 0), (0, extra)), constant_values=-jnp.inf)
  return topk_op.beam_topk(logits, scores, beam_width)


def _children(beams: Beams, logits: jax.Array, valid_items: ItemTable, level: int):
  """Constrained: candidate scores of every beam's children in the trie [B, W', M], with
  the children's codes and nodes (M = max_children[level]; missing children -inf)."""
  offsets = valid_items.offsets[level]
  first = offsets[beams.nodes]  # [B, W']
  count = offsets[beams.nodes + 1] - first
  slot = jnp.arange(valid_items.max_children[level])
  ok = slot < count[..., None]  # [B, W', M]
  nodes = jnp.where(ok, first[..., None] + slot, 0)
  codes = valid_items.codes[level][nodes]
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), codes, axis=-1)
  return jnp.where(ok, beams.scores[..., None] + logp, -jnp.inf), codes, nodes


def _top_children(cand: jax.Array, beam_width: int):
  """Top W of the flattened candidates [B, W', M] -> (scores [B, W], flat index)."""
  b, w_prev, m = cand.shape
  flat = cand.reshape(b, w_prev * m)
  if w_prev * m < beam_width:  # fewer candidates than slots: pad with empty ones
    flat = jnp.pad(flat, ((0, 0), (0, beam_width - w_prev * m)), constant_values=-jnp.inf)
  return topk_op.top_k(flat, beam_width)


def _step(beams: Beams, logits: jax.Array, valid_items: ItemTable | None, level: int,
          beam_width: int) -> tuple[Beams, jax.Array]:
  """One level: the new beams and their parents [B, W] (indices into the old beams)."""
  b, w_prev, v = logits.shape  # [B, W', V]
  if valid_items is None:
    scores, idx = _top_all(beams, logits, beam_width)
    m, codes, nodes = v, None, None
  else:
    cand, codes, nodes = _children(beams, logits, valid_items, level)
    scores, idx = _top_children(cand, beam_width)
    m = cand.shape[-1]
  idx = jnp.minimum(idx, w_prev * m - 1)  # padding slots point at a real (-inf) candidate
  parent = idx // m
  pick = lambda a: jnp.take_along_axis(a.reshape(b, w_prev * m), idx, axis=1)
  code = idx % m if codes is None else pick(codes)
  node = beams.nodes if nodes is None else pick(nodes)  # unused when unconstrained
  prefix = jnp.take_along_axis(beams.codes, parent[..., None], axis=1)
  return Beams(scores, jnp.concatenate([prefix, code[..., None]], axis=-1), node), parent


class Result(NamedTuple):
  """Top beam_width items per request, best first: device arrays from beam_search, host
  arrays from generate."""

  semantic_ids: Any  # [B, W, levels] int32; EMPTY in empty slots
  scores: Any  # [B, W] f32, sum of log-probabilities, descending; -inf in empty slots
  item_ids: Any | None  # [B, W] int32 with valid items; EMPTY in empty slots; else None


@functools.partial(jax.jit, static_argnames=("config", "beam_width", "rules", "kernels"))
def _search(params: Any, features: dict[str, jax.Array], mask: dict[str, jax.Array],
            valid_items: ItemTable | None, *, config: Config, beam_width: int, rules,
            kernels: str) -> Result:
  """beam_search, jitted; kernels (the kernel mode) is static, so each mode compiles and
  caches its own executable."""
  with backend.use(kernels):
    return _beam_search(params, features, mask, valid_items, config, beam_width, rules)


def beam_search(params: Any, features: dict[str, jax.Array], mask: dict[str, jax.Array],
                valid_items: ItemTable | None = None, *, config: Config, beam_width: int,
                rules=None) -> Result:
  """Beam search over a padded batch: features[name] [B, n, width], mask [B, n] bool, in
  the kernel mode in force (onerec_kernels.backend.mode()). Jitted per (shapes, config,
  beam width, rules, kernel mode).

  No input checks: generate() validates and pads, and is the API to call.
  """
  return _search(params, features, mask, valid_items, config=config,
                 beam_width=beam_width, rules=rules, kernels=backend.mode())


def lower(params, features, mask, valid_items=None, *, config: Config, beam_width: int,
          rules=None):
  """beam_search lowered for these arguments (call .compile() on it), in the kernel mode
  in force."""
  return _search.lower(params, features, mask, valid_items, config=config,
                       beam_width=beam_width, rules=rules, kernels=backend.mode())


def compiled_search(params, features, mask, valid_items=None, *, config: Config,
                    beam_width: int, rules=None, mesh: Mesh | None = None):
  """(run, how): beam_search compiled for these arguments' shapes in the kernel mode in
  force, once per process and, with the persistent compilation cache on, once per machine
  (compile_cache.program: how says which); run(params, features, mask, valid_items) ->
  Result. With a mesh (sharding.check_mesh'ed; the batch a multiple of its devices) the
  program runs over it (sharding.shard) and run first places its arguments there (a
  no-op for arguments placed already); without one, on one device. generate and warmup
  run the search through this."""
  search, args, statics, out_sharding = _search_program(
      params, features, mask, valid_items, config, beam_width, rules, mesh)
  place = (lambda a: a) if mesh is None else functools.partial(sharding.place, target=args)
  run, how = compile_cache.program(search, args, statics, out_sharding)
  tail = (None,) if valid_items is None else ()
  return (lambda *a: Result(*run(*place(a)), *tail)), how


def search_program(params, features, mask, valid_items=None, *, config: Config,
                   beam_width: int, rules=None, mesh: Mesh | None = None):
  """(args, statics, out_sharding) of the program compiled_search compiles for these
  arguments (arrays or jax.ShapeDtypeStructs), as compile_cache.preload takes them."""
  _, args, statics, out_sharding = _search_program(
      params, features, mask, valid_items, config, beam_width, rules, mesh)
  return args, statics, out_sharding


def _search_program(params, features, mask, valid_items, config, beam_width, rules, mesh):
  """(search, args, statics, out_sharding): the beam search as compile_cache.program
  compiles it, in the kernel mode in force; over the mesh when one is given."""
  mode = backend.mode()

  def search(p, f, m, v):
    with backend.use(mode):
      res = _beam_search(p, f, m, v, config, beam_width, rules)
    return tuple(x for x in res if x is not None)

  statics = {"program": "onerec_jax.generate.beam_search", "config": config.to_json(),
             "beam_width": beam_width, "kernels": mode,
             "rules": None if rules is None else rules.to_json()}
  args = (params, features, mask, valid_items)
  out_sharding = None
  if mesh is not None:
    statics["mesh"] = sharding.describe(mesh)
    search, args, out_sharding = sharding.shard(search, mesh, args,
                                                batched=(False, True, True, False))
  return search, args, statics, out_sharding


def _beam_search(params, features, mask, valid_items, config, beam_width, rules) -> Result:
  model = model_for(config)
  apply = lambda method, *args: model.apply({"params": params}, *args, method=method)
  with _fp8_scope(rules):
    context = apply("encode", features, mask)  # K/V [B, N, G, dh], shared by the beams
    b = mask[config.pathways[0].name].shape[0]
    beams = Beams(scores=jnp.zeros((b, 1), jnp.float32),
                  codes=jnp.zeros((b, 1, 0), jnp.int32), nodes=jnp.zeros((b, 1), jnp.int32))
    past = None  # the decoded positions' K/V, read through each beam's ancestors
    for level in range(config.levels):
      # [B, W', 1]: the last code (BOS at level 0 ignores its id); step 1 has one beam.
      last = beams.codes[:, :, -1:] if level else jnp.zeros((b, 1, 1), jnp.int32)
      h, kv = apply("decode", context, last, past)  # [B, W', 1, D]
      logits = apply("head", h[:, :, 0], level)  # [B, W', V] f32
      with jax.named_scope("beam_select"):  # named for device-time breakdowns
        beams, parent = _step(beams, logits, valid_items, level, beam_width)
      if level + 1 < config.levels:
        with jax.named_scope("past"):
          past = extend(past, kv, parent)
  alive = beams.scores > -jnp.inf
  semantic_ids = jnp.where(alive[..., None], beams.codes, EMPTY)
  item_ids = (None if valid_items is None
              else jnp.where(alive, valid_items.item_ids[beams.nodes], EMPTY))
  return Result(semantic_ids, beams.scores, item_ids)
