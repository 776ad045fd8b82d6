"""Weight and activation statistics and FP8 errors of a checkpoint (the paper's Figure 1).

CHECKPOINT is a converted onerec-jax checkpoint or a PyTorch-format source (default: the
shipped demo); --preset NAME uses random weights instead. Writes stats.json and stats.png
into --out and prints the table.
"""

import argparse
import json
import pathlib
import sys

import jax

from onerec_jax import analysis, quant
from onerec_jax.config import preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", nargs="?",
                      help="converted checkpoint or PyTorch-format source "
                           "(default: the shipped demo, checkpoints/demo)")
  parser.add_argument("--preset", help="random weights of this config preset instead")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the random weights and of the sample batch")
  parser.add_argument("--batch", type=int, default=32, help="sample batch (requests)")
  parser.add_argument("--rules", type=pathlib.Path,
                      help="FP8 rules JSON (default: the paper's set for the config)")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."),
                      help="folder for stats.json and stats.png (default: %(default)s)")


def _load(args: argparse.Namespace):
  """(config, FP16 params, source description)."""
  if args.preset:
    from onerec_jax.model import init_params  # pylint: disable=g-import-not-at-top
    config = preset(args.preset)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(args.seed))
    return config, params, f"preset {args.preset}, random weights, seed {args.seed}"
  from onerec_jax import checkpoint  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(args.checkpoint or checkpoint.DEMO_SOURCE)
  if (path / checkpoint.store.METADATA_NAME).exists():
    if checkpoint.load_rules(path) is not None:
      raise ValueError(f"{path} is an FP8 checkpoint; stats measures FP8 against the "
                       "unquantized weights, so give it the FP16 checkpoint")
    config, params = checkpoint.load(path)
  else:
    config = checkpoint.read_config(path)
    params = checkpoint.torch_to_jax(checkpoint.open_source(path), config)
  return config, params, str(path)


def run(args: argparse.Namespace) -> int:
  try:
    config, params, source = _load(args)
  except ValueError as e:  # CheckpointError, ConfigError included
    print(f"onerec-jax stats: {e}", file=sys.stderr)
    return 2
  rules = quant.Rules.from_json(args.rules.read_text()) if args.rules else None
  report = analysis.analyze(config, params, rules, batch=args.batch, seed=args.seed)
  report = {"source": source, **report}
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "stats.json").write_text(json.dumps(report, indent=2))
  analysis.plot(report, str(args.out / "stats.png"))
  print(f"{source}: {len(report['weights'])} weight matrices, "
        f"{len(report['activations'])} quantized modules, batch {args.batch}")
  print(analysis.format_table(report))
  print(f"wrote {args.out / 'stats.json'} and {args.out / 'stats.png'}")
  return 0
