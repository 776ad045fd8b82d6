"""PyTorch reference of the OneRec-V2 lazy decoder (tests only; the JAX path never imports
torch). Its state_dict naming defines the source checkpoint format (checkpoints/README.md).

Written plainly and independently of the JAX model: per-expert loops instead of a sort, and
an explicit repeat of K/V heads for GQA.
"""

import torch
import torch.nn.functional as F
from torch import nn

from onerec_jax.config import Config

_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float32": torch.float32}


class RMSNorm(nn.Module):
  def __init__(self, dim: int, eps: float):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x):
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
    return (y * self.weight.float()).to(x.dtype)


def linear(x, weight):
  """x @ weight.T accumulated in FP32 and rounded to x's dtype."""
  return F.linear(x.float(), weight.float()).to(x.dtype)


class Proj(nn.Module):
  def __init__(self, out_features: int, in_features: int):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features ** 0.5)

  def forward(self, x):
    return linear(x, self.weight.to(x.dtype))


class MLP(nn.Module):
  def __init__(self, d_model: int, d_ff: int):
    super().__init__()
    self.gate_proj = Proj(d_ff, d_model)
    self.up_proj = Proj(d_ff, d_model)
    self.down_proj = Proj(d_model, d_ff)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
  def __init__(self, cfg: Config):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(cfg.n_routed_experts, cfg.d_model) * 0.02)
    self.e_score_correction_bias = nn.Parameter(torch.zeros(cfg.n_routed_experts))


class MoE(nn.Module):
  def __init__(self, cfg: Config):
    super().__init__()
    self.cfg = cfg
    self.gate = Gate(cfg)
    self.experts = nn.ModuleList(MLP(cfg.d_model, cfg.expert_d_ff)
                                 for _ in range(cfg.n_routed_experts))
    if cfg.n_shared_experts:
      self.shared_experts = MLP(cfg.d_model, cfg.n_shared_experts * cfg.expert_d_ff)
    self.last_selection = None  # [T, k] expert ids of the last forward, for tests

  def forward(self, x):
    cfg = self.cfg
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    logits = x.float() @ self.gate.weight.float().T
    scores = logits.sigmoid() if cfg.router_score == "sigmoid" else logits.softmax(-1)
    _, ids = torch.topk(scores + self.gate.e_score_correction_bias.float(), cfg.top_k, dim=-1)
    gates = scores.gather(-1, ids)
    if cfg.norm_topk_prob:
      gates = gates / (gates.sum(-1, keepdim=True) + 1e-20)
    gates = gates * cfg.routed_scaling_factor
    self.last_selection = ids
    out = torch.zeros(x.shape, dtype=torch.float32)
    for e, expert in enumerate(self.experts):
      tok, slot = torch.nonzero(ids == e, as_tuple=True)
      if tok.numel():
        out[tok] += expert(x[tok]).float() * gates[tok, slot, None]
    out = out.to(x.dtype)
    if cfg.n_shared_experts:
      out = out + self.shared_experts(x)
    return out.reshape(shape)


def attention(q, k, v, mask):
  """q [B, H, Q, dh], k/v [B, H, S, dh], mask [.., Q, S] bool; softmax in FP32."""
  s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
  s = s.masked_fill(~mask, torch.finfo(torch.float32).min)
  return (s.softmax(-1).to(v.dtype).float() @ v.float()).to(q.dtype)


class CrossAttention(nn.Module):
  def __init__(self, cfg: Config):
    super().__init__()
    self.cfg = cfg
    hd = cfg.n_heads * cfg.d_head
    self.q_proj = Proj(hd, cfg.d_model)
    self.o_proj = Proj(cfg.d_model, hd)

  def forward(self, h, k, v, mask):  # h [B, T, D], k/v [B, N, G, dh], mask [B, N]
    cfg = self.cfg
    b, t, _ = h.shape
    q = self.q_proj(h).reshape(b, t, cfg.n_heads, cfg.d_head).transpose(1, 2)
    rep = cfg.n_heads // cfg.kv_heads
    k = k.transpose(1, 2).repeat_interleave(rep, dim=1)  # [B, H, N, dh]
    v = v.transpose(1, 2).repeat_interleave(rep, dim=1)
    o = attention(q, k, v, mask[:, None, None, :])
    return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class SelfAttention(nn.Module):
  def __init__(self, cfg: Config):
    super().__init__()
    self.cfg = cfg
    hd = cfg.n_heads * cfg.d_head
    self.q_proj = Proj(hd, cfg.d_model)
    self.k_proj = Proj(hd, cfg.d_model)
    self.v_proj = Proj(hd, cfg.d_model)
    self.o_proj = Proj(cfg.d_model, hd)

  def forward(self, h):
    cfg = self.cfg
    b, t, _ = h.shape
    split = lambda a: a.reshape(b, t, cfg.n_heads, cfg.d_head).transpose(1, 2)
    q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    o = attention(q, k, v, causal)
    return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class Layer(nn.Module):
  def __init__(self, cfg: Config, i: int):
    super().__init__()
    self.cross_attn_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
    self.cross_attn = CrossAttention(cfg)
    self.self_attn_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
    self.self_attn = SelfAttention(cfg)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.rms_eps)
    self.mlp = MoE(cfg) if cfg.is_moe(i) else MLP(cfg.d_model, cfg.d_ff)

  def forward(self, h, k, v, mask):
    h = h + self.cross_attn(self.cross_attn_norm(h), k, v, mask)
    h = h + self.self_attn(self.self_attn_norm(h))
    return h + self.mlp(self.mlp_norm(h))


class Context(nn.Module):
  def __init__(self, cfg: Config):
    super().__init__()
    self.cfg = cfg
    self.pathways = nn.ModuleDict({p.name: Proj(cfg.d_context, p.width) for p in cfg.pathways})
    width = cfg.kv_heads * cfg.d_head
    self.k_norms = nn.ModuleList(RMSNorm(width, cfg.rms_eps) for _ in range(cfg.kv_sets))
    if cfg.kv_split == 2:
      self.v_norms = nn.ModuleList(RMSNorm(width, cfg.rms_eps) for _ in range(cfg.kv_sets))

  def forward(self, features, dtype):
    cfg = self.cfg
    c = torch.cat([self.pathways[p.name](features[p.name].to(dtype)) for p in cfg.pathways],
                  dim=1)  # [B, N, d_context]
    width = cfg.kv_heads * cfg.d_head
    chunks = [c[..., i * width:(i + 1) * width] for i in range(cfg.kv_split * cfg.kv_sets)]
    kv = []
    for s in range(cfg.kv_sets):
      k = self.k_norms[s](chunks[s * cfg.kv_split])
      v = self.v_norms[s](chunks[s * cfg.kv_split + 1]) if cfg.kv_split == 2 else k
      shape = (*k.shape[:2], cfg.kv_heads, cfg.d_head)
      kv.append((k.reshape(shape), v.reshape(shape)))
    return kv


class Head(nn.Module):
  def __init__(self, cfg: Config, codebook: int):
    super().__init__()
    self.norm = RMSNorm(cfg.d_model, cfg.rms_eps)
    self.proj = Proj(codebook, cfg.d_model)


class Embed(nn.Module):
  def __init__(self, cfg: Config):
    super().__init__()
    self.bos = nn.Parameter(torch.randn(cfg.d_model))
    self.levels = nn.ModuleList(nn.Embedding(c, cfg.d_model) for c in cfg.codebook_sizes[:-1])
    self.positions = nn.Embedding(cfg.levels, cfg.d_model)


class OneRecV2Torch(nn.Module):
  """forward(features {name: [B, n, width]}, ids [B, levels], mask [B, N] | None) ->
  list of per-level logits [B, C_j] in FP32, teacher-forced."""

  def __init__(self, cfg: Config):
    super().__init__()
    self.cfg = cfg
    self.context = Context(cfg)
    self.embed = Embed(cfg)
    self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.n_layers))
    self.heads = nn.ModuleList(Head(cfg, c) for c in cfg.codebook_sizes)

  def forward(self, features, ids, mask=None):
    cfg = self.cfg
    dtype = _TORCH_DTYPES[cfg.dtype]
    kv = self.context(features, dtype)
    b = ids.shape[0]
    if mask is None:
      mask = torch.ones(b, kv[0][0].shape[1], dtype=torch.bool)
    cols = [self.embed.bos.expand(b, -1)]
    cols += [self.embed.levels[j](ids[:, j]) for j in range(cfg.levels - 1)]
    h = (torch.stack(cols, 1) + self.embed.positions.weight[None]).to(dtype)  # [B, L, D]
    for i, layer in enumerate(self.layers):
      k, v = kv[cfg.kv_set_of(i)]
      h = layer(h, k, v, mask)
    return [linear(head.norm(h[:, j]), head.proj.weight.to(dtype)).float()
            for j, head in enumerate(self.heads)]

  def moe_selections(self):
    """Expert ids chosen by each MoE layer in the last forward: {layer: [T, k]}."""
    return {i: layer.mlp.last_selection for i, layer in enumerate(self.layers)
            if isinstance(layer.mlp, MoE)}
