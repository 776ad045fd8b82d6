"""Weight and activation statistics and FP8 errors of a checkpoint (the paper's Figure 1).

CHECKPOINT is a converted onerec-jax checkpoint or a PyTorch-format source, unquantized
(default: the shipped demo); --preset NAME uses random weights instead. The sample batch
is random standard-normal contexts, or with --test-requests the trained model's own test
requests (rebuilt from CHECKPOINT/data.json, --batch of them spread over the split).
--recipe NAME measures each module's error under that recipe instead of the paper's FP8
rules. Writes stats.json and stats.png into --out and prints the table.
"""

import argparse
import json
import pathlib

from onerec_jax.cli._paths import writable_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", nargs="?",
                      help="converted checkpoint or PyTorch-format source, unquantized "
                           "(default: the shipped demo)")
  parser.add_argument("--preset", help="random weights of this config preset instead")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the random weights and of the sample batch")
  parser.add_argument("--batch", type=int, default=32, help="sample batch (requests)")
  rules = parser.add_mutually_exclusive_group()
  rules.add_argument("--rules", type=pathlib.Path,
                     help="quantization rules JSON (default: the paper's set for the config)")
  rules.add_argument("--recipe", help="the rules of this recipe (onerec_jax.model.recipes)")
  parser.add_argument("--test-requests", action="store_true",
                      help="sample the trained model's test requests, not random contexts")
  parser.add_argument("--data", type=pathlib.Path,
                      help="dataset options for --test-requests (default: "
                           "CHECKPOINT/data.json)")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."),
                      help="folder for stats.json and stats.png")


def _load(args: argparse.Namespace):
  """(config, unquantized params, source description)."""
  import jax
  from onerec_jax import checkpoint
  from onerec_jax.config import preset
  from onerec_jax.model import init_params
  if args.preset:
    config = preset(args.preset)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(args.seed))
    return config, params, f"preset {args.preset}, random weights, seed {args.seed}"
  ckpt = checkpoint.load(args.checkpoint, unquantized=True)
  return ckpt.config, ckpt.params, ckpt.source


def _test_requests(args: argparse.Namespace, config):
  """--batch test requests spread over the trained model's test split: (features, target
  semantic IDs)."""
  import jax.numpy as jnp
  import numpy as np
  from onerec_jax.cli._data import data_options
  from onerec_jax.lab import datasets
  dataset = datasets.make(data_options(args.checkpoint and pathlib.Path(args.checkpoint),
                                       args.data), config)
  users, cuts = dataset.examples("test")
  pick = np.unique(np.linspace(0, len(users) - 1, min(args.batch, len(users))).astype(int))
  features = dataset.features(users[pick], cuts[pick])
  ids = dataset.semantic_ids[dataset.targets(users[pick], cuts[pick])]
  return ({k: jnp.asarray(v, config.compute_dtype) for k, v in features.items()},
          jnp.asarray(ids))


def run(args: argparse.Namespace) -> int:
  from onerec_jax import quant
  from onerec_jax.errors import InputError
  if args.batch < 1:
    raise InputError(f"--batch must be a positive integer, got {args.batch}")
  if args.test_requests and args.preset:
    raise InputError("--test-requests needs a trained checkpoint, not --preset")
  if args.recipe:
    from onerec_jax.model.recipes import check_recipe
    check_recipe(args.recipe)
  out = writable_folder(args.out)
  rules = quant.Rules.from_json(args.rules.read_text()) if args.rules else None
  config, params, source = _load(args)
  if args.recipe:
    from onerec_jax.model.recipes import recipe_rules
    rules = recipe_rules(args.recipe, config)
  from onerec_jax.lab import analysis
  sample, what = None, "random contexts"
  if args.test_requests:
    sample, what = _test_requests(args, config), "test requests"
  report = analysis.analyze(config, params, rules, batch=args.batch, seed=args.seed,
                            sample=sample)
  report = {"source": source, "sample": what, **report}
  (out / "stats.json").write_text(json.dumps(report, indent=2))
  analysis.plot(report, str(out / "stats.png"))
  print(f"{source}: {len(report['weights'])} weight matrices, "
        f"{len(report['activations'])} quantized modules, batch {report['batch']} "
        f"({what})")
  print(analysis.format_table(report))
  print(f"wrote {out / 'stats.json'} and {out / 'stats.png'}")
  return 0
