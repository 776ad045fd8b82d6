"""The OneRec-V2 lazy decoder (docs/architecture.md) in Flax linen.

Shapes: B requests, W beams per request, T decoder positions in a call, N context tokens,
H query heads, G = kv_heads, dh = d_head, D = d_model. The decoder works on hidden states
[B, W, T, D] so that the W beams of a request share that request's context K/V
[B, N, G, dh]: cross-attention of a request is one attention of W*T*H query rows against
its N context rows, never a W-fold copy of K/V.
"""

import dataclasses
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import onerec_kernels.attention as attention_op
import onerec_kernels.grouped_gemm as grouped_gemm_op
import onerec_kernels.topk as topk_op

from onerec_jax.config import Config
from onerec_jax.model.expert_parallel import ROUTED_EXPERTS, expert_axis, experts_per_shard
from onerec_jax.model.layers import (GroupedLinear, Linear, RMSNorm, SwiGLU, attend_decoded,
                                     matmul_precision, swiglu, valid_first)
from onerec_kernels.quantize import RMSNormOf, RowsOf, SwiGLUOf

# Context: {"kv": ((k, v) per KV set, each [B, N, G, dh]), "lengths": [B] int32, each
# request's valid tokens, which come first}.
Context = dict[str, Any]


class Past(NamedTuple):
  """The decoded positions the self-attention reads: kv[layer][p] = (k, v), each
  [B, W_p, H, dh] for the W_p rows (beams) that decoded position p, and rows [B, W, P]
  int32: for each current row, the row of position p it descends from. Kept per position
  and gathered when read, so a decoding step never copies the earlier positions' K/V to
  follow the beams (the reorder a per-beam cache needs)."""

  kv: tuple[tuple[tuple[jax.Array, jax.Array], ...], ...]
  rows: jax.Array

  @property
  def positions(self) -> int:
    return self.rows.shape[-1]


def extend(past: Past | None, kv: tuple[tuple[jax.Array, jax.Array], ...],
           parents: jax.Array) -> Past:
  """past with the positions of one decode call appended, following the rows that
  parents [B, W] picks from that call's W' rows: kv is decode's per-layer (k, v)
  [B, W', T, H, dh]."""
  t = kv[0][0].shape[2]
  parents = parents.astype(jnp.int32)
  if past is None:
    rows = jnp.zeros(parents.shape + (0,), jnp.int32)
    layers = tuple(() for _ in kv)
  else:
    rows = jnp.take_along_axis(past.rows, parents[..., None], axis=1)  # [B, W, P]
    layers = past.kv
  new = tuple(layer + tuple((k[:, :, i], v[:, :, i]) for i in range(t))
              for layer, (k, v) in zip(layers, kv))
  rows = jnp.concatenate([rows, jnp.repeat(parents[..., None], t, axis=-1)], axis=-1)
  return Past(new, rows)


def _kw(cfg: Config) -> dict[str, Any]:
  return dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)


class ContextProcessor(nn.Module):
  """Pathway projections, concatenation along the sequence, chunking into K/V sets.

  With a mask, each request's valid tokens are put first (in their order), so that the
  context is described by its key counts, which the attention takes as they are (cuDNN's
  fused attention with no run-time check of the mask): the cross-attention does not
  depend on the order of its keys, and each token's K/V depends on that token alone. A
  request with no valid token (generate refuses those) attends every key.
  """

  config: Config

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array],
               mask: Mapping[str, jax.Array] | None = None) -> Context:
    cfg = self.config
    parts, masks = [], []
    for p in cfg.pathways:
      x = features[p.name]  # [B, n_p, width_p]
      parts.append(Linear(cfg.d_context, name=f"pathway_{p.name}", **_kw(cfg))(x))
      m = None if mask is None else mask.get(p.name)
      masks.append(jnp.ones(x.shape[:2], bool) if m is None else m.astype(bool))
    c = jnp.concatenate(parts, axis=1)  # [B, N, d_context]
    b, n, _ = c.shape
    lengths = jnp.full((b,), n, jnp.int32)
    if mask is not None:
      order, lengths = valid_first(jnp.concatenate(masks, axis=1))  # [B, N], [B]
      c = jnp.take_along_axis(c, order[:, :, None], axis=1)
    width = cfg.kv_heads * cfg.d_head
    chunks = c.reshape(b, n, cfg.kv_split * cfg.kv_sets, width)
    kv = []
    for s in range(cfg.kv_sets):
      k = RMSNorm(cfg.rms_eps, name=f"k_norm_{s}", **_kw(cfg))(chunks[:, :, s * cfg.kv_split])
      k = k.reshape(b, n, cfg.kv_heads, cfg.d_head)
      if cfg.kv_split == 2:
        v = RMSNorm(cfg.rms_eps, name=f"v_norm_{s}", **_kw(cfg))(
            chunks[:, :, s * cfg.kv_split + 1]).reshape(b, n, cfg.kv_heads, cfg.d_head)
      else:
        v = k
      kv.append((k, v))
    return {"kv": tuple(kv), "lengths": lengths}


class CrossAttention(nn.Module):
  """Lazy cross-attention: only W_q and W_o; K/V come from the context processor, shared
  by all beams of a request (onerec_kernels.attention: the fused kernel on the GPU)."""

  config: Config

  @nn.compact
  def __call__(self, h: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array,
               producer: RMSNormOf | None = None):
    cfg = self.config
    b, w, t, _ = h.shape  # [B, W, T, D]
    g, r = cfg.kv_heads, cfg.n_heads // cfg.kv_heads
    q = Linear(cfg.n_heads * cfg.d_head, name="q_proj", **_kw(cfg))(h, producer=producer)
    q = q.reshape(b, w * t, g, r, cfg.d_head)
    o = attention_op.attention(q, k, v, key_lengths=lengths)  # [B, W*T, G, R, dh]
    o = o.reshape(b, w, t, cfg.n_heads * cfg.d_head)
    return Linear(cfg.d_model, name="o_proj", **_kw(cfg))(o)


class SelfAttention(nn.Module):
  """Causal self-attention over the decoder positions: the positions of this call, after
  the earlier ones of `past` (read through the rows each current row descends from).

  At most `levels` positions exist: layers.attend_decoded, elementwise ops that XLA fuses
  with the gathers.
  """

  config: Config

  @nn.compact
  def __call__(self, h: jax.Array, past: tuple[tuple[jax.Array, jax.Array], ...],
               rows: jax.Array | None, producer: RMSNormOf | None = None):
    cfg = self.config
    b, w, t, _ = h.shape  # [B, W, T, D]
    hd = cfg.n_heads * cfg.d_head
    qkv = Linear(3 * hd, name="qkv_proj", **_kw(cfg))(h, producer=producer)
    q, k, v = (a.reshape(b, w, t, cfg.n_heads, cfg.d_head) for a in jnp.split(qkv, 3, -1))
    ancestor = lambda a, p: jnp.take_along_axis(a, rows[:, :, p, None, None], axis=1)
    keys = [ancestor(pk, p) for p, (pk, _) in enumerate(past)] + [k[:, :, i] for i in range(t)]
    values = [ancestor(pv, p) for p, (_, pv) in enumerate(past)] + [v[:, :, i] for i in range(t)]
    # Query position len(past) + i sees keys 0 .. len(past) + i; every head its own
    # group (G = H, R = 1).
    n = len(past)
    o = jnp.stack([attend_decoded(q[:, :, i, :, None], keys[:n + i + 1], values[:n + i + 1])
                   for i in range(t)], axis=2).reshape(b, w, t, hd)
    return Linear(cfg.d_model, name="o_proj", **_kw(cfg))(o), (k, v)


class Router(nn.Module):
  """DeepSeek-V3 style router: logits from the compute-dtype operands accumulated in
  FP32 (the tensor cores' rate; a 16-bit product is exact in FP32, so only the order of
  the sums differs from an FP32 matmul of the same values), then
  onerec_kernels.topk.router_topk (scores, bias-corrected top-k selection, normalised and
  scaled gates).

  Returns (expert ids [T, k] int32, gates [T, k] f32).
  """

  config: Config

  @nn.compact
  def __call__(self, x: jax.Array):  # [T, D]
    cfg = self.config
    e = cfg.n_routed_experts
    w = self.param("weight", nn.initializers.normal(0.02), (e, x.shape[-1]), cfg.params_dtype)
    bias = (self.param("score_bias", nn.initializers.zeros, (e,), cfg.params_dtype)
            if cfg.router_bias else None)
    dtype = cfg.compute_dtype
    logits = jnp.einsum("td,ed->te", x.astype(dtype), w.astype(dtype),
                        preferred_element_type=jnp.float32,
                        precision=matmul_precision(dtype))
    ids, gates = topk_op.router_topk(logits, None if bias is None else bias.astype(jnp.float32),
                                     cfg.top_k,
                                     cfg.router_score, cfg.norm_topk_prob,
                                     cfg.routed_scaling_factor)
    self.sow("intermediates", "expert_ids", ids)  # for tests and routing statistics
    return ids, gates


class RoutedExperts(nn.Module):
  """SwiGLU experts over tokens sorted by expert: one grouped GEMM for gate/up, one for
  down, then the gate-weighted combine.

  With the experts sharded over a mesh axis (expert_parallel.experts_sharded_over), this
  device's weights are its own ceil(E / n) experts: it gathers the axis' tokens, runs
  their rows routed to its experts (the others sort past every group and come out zero)
  and reduce-scatters the FP32 partial sums, so each device gets its own tokens' output.
  """

  config: Config

  @nn.compact
  def __call__(self, x: jax.Array, ids: jax.Array, gates: jax.Array) -> jax.Array:
    cfg = self.config
    e = cfg.n_routed_experts
    axis = expert_axis()
    if axis is not None:
      e = experts_per_shard(e, jax.lax.axis_size(axis))
      # [n*T, D], [n*T, k]: every token of the axis; ids relative to this device's first
      # expert, so other devices' experts fall outside [0, e).
      x, ids, gates = (jax.lax.all_gather(a, axis, tiled=True) for a in (x, ids, gates))
      ids = ids - jax.lax.axis_index(axis) * e
    order, group_sizes = grouped_gemm_op.sort_by_expert(ids, e)
    gather = RowsOf(x, order // cfg.top_k)  # [T*k, D], sorted by expert
    h = GroupedLinear(e, 2 * cfg.expert_d_ff, name="gate_up_proj", **_kw(cfg))(
        x[gather.rows], group_sizes, producer=gather)
    y = GroupedLinear(e, cfg.d_model, name="down_proj", **_kw(cfg))(
        swiglu(h), group_sizes, producer=SwiGLUOf(h))
    y = grouped_gemm_op.combine(y, order, gates)  # [T, D] f32
    if axis is not None:  # sum over the devices' experts; each keeps its own tokens' rows
      y = jax.lax.psum_scatter(y, axis, scatter_dimension=0, tiled=True)
    return y.astype(cfg.compute_dtype)


class MoE(nn.Module):
  """Routed experts plus the shared expert(s), which run on every token."""

  config: Config

  @nn.compact
  def __call__(self, x: jax.Array, producer: RMSNormOf | None = None) -> jax.Array:
    cfg = self.config
    flat = lambda a: a.reshape(-1, a.shape[-1])
    xt = flat(x)  # [T, D]
    ids, gates = Router(cfg, name="router")(xt)
    y = RoutedExperts(cfg, name=ROUTED_EXPERTS)(xt, ids, gates)
    if cfg.n_shared_experts:
      y = y + SwiGLU(cfg.d_model, cfg.n_shared_experts * cfg.expert_d_ff,
                     name="shared_experts", **_kw(cfg))(
                         xt, producer=producer and dataclasses.replace(producer, x=flat(producer.x)))
    return y.reshape(x.shape)


class DecoderBlock(nn.Module):
  """Pre-norm: cross-attention, causal self-attention, FFN (dense SwiGLU or MoE)."""

  config: Config
  layer: int

  @nn.compact
  def __call__(self, h, context: Context, past, rows):
    cfg = self.config

    def norm(name: str, x: jax.Array) -> tuple[jax.Array, RMSNormOf]:
      """RMSNorm(x) and its producer, for the FP8 quantization of the matmul it feeds."""
      module = RMSNorm(cfg.rms_eps, name=name, **_kw(cfg))
      return module(x), module.producer(x)

    k, v = context["kv"][cfg.kv_set_of(self.layer)]
    x, producer = norm("cross_attn_norm", h)
    h = h + CrossAttention(cfg, name="cross_attn")(x, k, v, context["lengths"], producer)
    x, producer = norm("self_attn_norm", h)
    a, kv = SelfAttention(cfg, name="self_attn")(x, past, rows, producer)
    h = h + a
    x, producer = norm("mlp_norm", h)
    if cfg.is_moe(self.layer):
      h = h + MoE(cfg, name="mlp")(x, producer=producer)
    else:
      h = h + SwiGLU(cfg.d_model, cfg.d_ff, name="mlp", **_kw(cfg))(x, producer=producer)
    return h, kv


class DecoderEmbed(nn.Module):
  """Decoder inputs: BOS at position 0, level j-1's codebook at position j, plus a learned
  embedding per decoder position."""

  config: Config

  @nn.compact
  def __call__(self, ids: jax.Array, start: int) -> jax.Array:
    """ids: [B, W, T] codes for positions start .. start+T-1 (ignored at position 0)."""
    cfg = self.config
    d = cfg.d_model
    init = nn.initializers.normal(1.0)
    bos = self.param("bos", init, (d,), cfg.params_dtype)
    tables = [self.param(f"level_{j}", init, (c, d), cfg.params_dtype)
              for j, c in enumerate(cfg.codebook_sizes[:-1])]
    position = self.param("position", init, (cfg.levels, d), cfg.params_dtype)
    cols = []
    for t in range(ids.shape[-1]):
      p = start + t
      if p == 0:
        x = jnp.broadcast_to(bos, ids.shape[:-1] + (d,))
      else:
        x = jnp.take(tables[p - 1], ids[..., t], axis=0)
      cols.append(x + position[p])
    return jnp.stack(cols, axis=-2).astype(cfg.compute_dtype)  # [B, W, T, D]


class OneRecV2(nn.Module):
  """The lazy decoder. Methods: encode (context K/V), decode (positions, after the
  decoded positions of an optional Past), head (per-level logits) and __call__
  (teacher-forced logits of all levels)."""

  config: Config

  def setup(self):
    cfg = self.config
    self.context = ContextProcessor(cfg)
    self.embed = DecoderEmbed(cfg)
    self.layers = [DecoderBlock(cfg, i, name=f"layer_{i}") for i in range(cfg.n_layers)]
    self.heads = [(RMSNorm(cfg.rms_eps, name=f"head_{j}_norm", **_kw(cfg)),
                   Linear(c, name=f"head_{j}_proj", **_kw(cfg)))
                  for j, c in enumerate(cfg.codebook_sizes)]

  def encode(self, features: Mapping[str, jax.Array],
             mask: Mapping[str, jax.Array] | None = None) -> Context:
    """Context K/V for each KV set: features[name] [B, n, width] per pathway."""
    return self.context(features, mask)

  def decode(self, context: Context, ids: jax.Array, past: Past | None = None
             ) -> tuple[jax.Array, tuple[tuple[jax.Array, jax.Array], ...]]:
    """Runs the T decoder positions after past's (from 0 without one) for ids [B, W, T];
    returns the final hidden states [B, W, T, D] and, per layer, the self-attention
    (k, v) of these positions [B, W, T, H, dh] (extend() appends them to past)."""
    start = 0 if past is None else past.positions
    h = self.embed(ids, start)
    kv = []
    for i, layer in enumerate(self.layers):
      h, layer_kv = layer(h, context, () if past is None else past.kv[i],
                          None if past is None else past.rows)
      kv.append(layer_kv)
    return h, tuple(kv)

  def head(self, h: jax.Array, level: int) -> jax.Array:
    """Level `level`'s logits in FP32: [..., D] -> [..., codebook_sizes[level]]."""
    norm, proj = self.heads[level]
    return proj(norm(h)).astype(jnp.float32)

  def __call__(self, features: Mapping[str, jax.Array], ids: jax.Array,
               mask: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, ...]:
    """Teacher-forced logits: ids [B, levels] (the item's codes; the last one is never an
    input) -> one [B, codebook_sizes[j]] array per level."""
    context = self.encode(features, mask)
    b = ids.shape[0]
    inputs = jnp.concatenate([jnp.zeros((b, 1), ids.dtype), ids[:, :-1]], axis=1)
    h, _ = self.decode(context, inputs[:, None, :])  # [B, 1, levels, D]
    return tuple(self.head(h[:, 0, j], j) for j in range(self.config.levels))
