"""The checkpoint name map against the PyTorch reference model: each JAX parameter holds
exactly the tensors that play its role in tests/torch_reference.py, read from the
reference's modules (not from its names), so that two names swapped in
onerec_jax/checkpoint/mapping.py fail here, in conversion and in export alike (round trips
through the one table cannot see a swap)."""

import numpy as np
import pytest
from flax import traverse_util

from helpers import state_dict_numpy, torch_model
from onerec_jax.checkpoint import jax_to_torch, torch_to_jax
from onerec_jax.checkpoint.source import StateDictSource
from onerec_jax.config import preset
from torch_reference import MoE


def _expected_tree(model, cfg) -> dict[str, np.ndarray]:
  """JAX path -> value, from the reference's modules: fused projections concatenate their
  parts along the output axis in the order q, k, v and gate, up; routed experts stack."""
  t = lambda p: p.detach().numpy()
  cat = lambda *ps: np.concatenate([t(p) for p in ps])
  ctx, emb = model.context, model.embed
  out = {"embed/bos": t(emb.bos), "embed/position": t(emb.positions.weight)}
  out.update({f"embed/level_{j}": t(e.weight) for j, e in enumerate(emb.levels)})
  out.update({f"context/pathway_{p.name}/weight": t(ctx.pathways[p.name].weight)
              for p in cfg.pathways})
  for s in range(cfg.kv_sets):
    out[f"context/k_norm_{s}/weight"] = t(ctx.k_norms[s].weight)
    if cfg.kv_split == 2:
      out[f"context/v_norm_{s}/weight"] = t(ctx.v_norms[s].weight)
  for i, layer in enumerate(model.layers):
    sa, ca, mlp, at = layer.self_attn, layer.cross_attn, layer.mlp, f"layer_{i}/"
    out.update({
        at + "cross_attn_norm/weight": t(layer.cross_attn_norm.weight),
        at + "cross_attn/q_proj/weight": t(ca.q_proj.weight),
        at + "cross_attn/o_proj/weight": t(ca.o_proj.weight),
        at + "self_attn_norm/weight": t(layer.self_attn_norm.weight),
        at + "self_attn/qkv_proj/weight": cat(sa.q_proj.weight, sa.k_proj.weight,
                                              sa.v_proj.weight),
        at + "self_attn/o_proj/weight": t(sa.o_proj.weight),
        at + "mlp_norm/weight": t(layer.mlp_norm.weight)})
    ffn = lambda m, path: {
        f"{path}/gate_up_proj/weight": cat(m.gate_proj.weight, m.up_proj.weight),
        f"{path}/down_proj/weight": t(m.down_proj.weight)}
    if isinstance(mlp, MoE):
      out[at + "mlp/router/weight"] = t(mlp.gate.weight)
      out[at + "mlp/router/score_bias"] = t(mlp.gate.e_score_correction_bias)
      experts = [ffn(e, "x") for e in mlp.experts]
      out.update({at + "mlp/experts" + k[1:]: np.stack([e[k] for e in experts])
                  for k in experts[0]})
      if cfg.n_shared_experts:
        out.update(ffn(mlp.shared_experts, at + "mlp/shared_experts"))
    else:
      out.update(ffn(mlp, at + "mlp"))
  for j, head in enumerate(model.heads):
    out[f"head_{j}_norm/weight"] = t(head.norm.weight)
    out[f"head_{j}_proj/weight"] = t(head.proj.weight)
  return out


@pytest.mark.parametrize("name", ["tiny-moe", "tiny"])  # MoE with shared experts, kv_split 2; dense
def test_conversion_puts_each_reference_tensor_in_its_role(name):
  cfg = preset(name)
  model = torch_model(cfg, seed=17)
  want = _expected_tree(model, cfg)
  got = traverse_util.flatten_dict(
      torch_to_jax(StateDictSource(state_dict_numpy(model)), cfg), sep="/")
  assert set(got) == set(want)
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_export_writes_each_role_under_the_reference_name():
  cfg = preset("tiny-moe")
  model = torch_model(cfg, seed=18)
  state = state_dict_numpy(model)
  exported = jax_to_torch(traverse_util.unflatten_dict(_expected_tree(model, cfg), sep="/"),
                          cfg)
  assert set(exported) == set(state)
  for name, value in state.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
