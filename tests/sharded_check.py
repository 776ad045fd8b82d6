"""Run in its own process by tests/test_sharding.py, with N forced host devices: the
sharded beam search against the single-device one, one JSON line per case.

  XLA_FLAGS=--xla_force_host_platform_device_count=N python tests/sharded_check.py N [CASE]

Cases: the groups of CASES (all of them by default).
"""

import json
import sys

import jax
import numpy as np

from onerec_jax import generate as gen
from onerec_jax import quant
from onerec_jax.config import preset
from onerec_jax.generate import sharding
from onerec_jax.model import default_rules, init_params

BEAM = 8


def _single(params, cfg, feats, rules=None, items=None):
  """The single-device program (beam_search, no mesh) over the batch, unpadded."""
  batch = len(next(iter(feats.values())))
  f, m = gen.pad_batch(cfg, feats, None, 0, batch, batch)
  res = gen.beam_search(params, f, m, items, config=cfg, beam_width=BEAM, rules=rules)
  return gen.Result(*(None if a is None else np.asarray(a) for a in res))


def _report(case, want, got, **extra):
  same = lambda a, b: (a is None and b is None) or bool(np.array_equal(a, b))
  print(json.dumps({"case": case, "rows": len(got.scores),
                    "ids_equal": same(want.semantic_ids, got.semantic_ids),
                    "items_equal": same(want.item_ids, got.item_ids),
                    "max_score_diff": float(np.max(np.abs(want.scores - got.scores))),
                    **extra}), flush=True)


def _refused(case, fn):
  try:
    fn()
  except sharding.MeshError as e:
    print(json.dumps({"case": case, "refused": str(e)}), flush=True)
  else:
    print(json.dumps({"case": case, "refused": None}), flush=True)


def data_parallel(n, cfg, params):
  """n + 1 requests (a padded bucket) over n devices, the given and the default mesh, and
  a DATA x EXPERT mesh of n/2 x 2."""
  run = lambda feats, **kw: gen.generate(params, cfg, feats, beam_width=BEAM, **kw)
  uneven = gen.random_contexts(cfg, n + 1, seed=1)
  want = _single(params, cfg, uneven)
  _report("data_parallel_uneven", want, run(uneven, mesh=sharding.make_mesh(n)))
  _report("default_mesh", want, run(uneven), devices=sharding.default_mesh().size)
  _report("data_and_expert", want,
          run(uneven, mesh=sharding.make_mesh(n, expert_parallel=2)))


def expert_parallel(n, cfg, params):
  """Experts over all n devices, 2n + 1 requests in chunks of n."""
  many = gen.random_contexts(cfg, 2 * n + 1, seed=2)
  _report("expert_parallel_chunks", _single(params, cfg, many),
          gen.generate(params, cfg, many, beam_width=BEAM, batch_buckets=(n,),
                       mesh=sharding.make_mesh(n, expert_parallel=n)))


def padded_fp8_constrained(n, cfg, params):
  """n + 2 experts over n devices (padded to 2n with experts no token is routed to), FP8
  weights, constrained decoding."""
  odd = cfg.replace(n_routed_experts=n + 2)
  rules = default_rules(odd)
  odd_params = quant.quantize_params(
      jax.jit(init_params, static_argnums=0)(odd, jax.random.key(3)), rules)
  items = gen.build_item_table(*gen.random_items(odd, 300, seed=4), odd.codebook_sizes)
  few = gen.random_contexts(odd, 3, seed=5)
  mesh = sharding.make_mesh(n, expert_parallel=n)
  placed = sharding.place_params(odd_params, mesh)
  experts = placed["layer_2"]["mlp"]["experts"]["gate_up_proj"]["weight"].value
  _report("expert_parallel_padded_fp8_constrained",
          _single(odd_params, odd, few, rules, items),
          gen.generate(placed, odd, few, beam_width=BEAM, valid_items=items, rules=rules,
                       mesh=mesh),
          placed_experts=experts.shape[0],
          local_experts=experts.addressable_shards[0].data.shape[0])


def refusals(n, cfg, params):
  """Meshes that do not fit the model or the devices."""
  tiny = preset("tiny")
  _refused("expert_parallel_without_moe", lambda: gen.generate(
      params, tiny, gen.random_contexts(tiny, 2), beam_width=BEAM,
      mesh=sharding.make_mesh(n, expert_parallel=2)))
  few_experts = cfg.replace(n_routed_experts=n - 1, top_k=1)
  _refused("more_shards_than_experts", lambda: gen.generate(
      params, few_experts, gen.random_contexts(few_experts, 2), beam_width=BEAM,
      mesh=sharding.make_mesh(n, expert_parallel=n)))
  _refused("expert_parallel_not_dividing", lambda: sharding.make_mesh(n, expert_parallel=3))


def stored_program(n, cfg, params):
  """The sharded program through the persistent cache ($ONEREC_JAX_COMPILE_CACHE): how
  warmup got it (traced and exported, or read back by a later process)."""
  gen.compile_cache.enable()
  hows = []
  gen.warmup(params, cfg, beam_width=BEAM, batch_buckets=(n,),
             mesh=sharding.make_mesh(n, expert_parallel=n),
             progress=lambda bucket, seconds, how: hows.append(how))
  print(json.dumps({"case": "stored_program", "how": hows}), flush=True)


CASES = {f.__name__: f for f in (data_parallel, expert_parallel, padded_fp8_constrained,
                                 refusals)}
OTHER_CASES = {"stored_program": stored_program}  # run only when named


def main(n: int, cases: list[str]) -> None:
  assert len(jax.devices()) == n, jax.devices()
  cfg = preset("tiny-moe")  # 8 routed experts, top-2, FP32 compute
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  for name in cases or CASES:
    {**CASES, **OTHER_CASES}[name](n, cfg, params)


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2:])
