"""Weight and activation statistics and FP8 errors of a checkpoint (the paper's Figure 1).

CHECKPOINT is a converted onerec-jax checkpoint or a PyTorch-format source, unquantized
(default: the shipped demo); --preset NAME uses random weights instead. Writes stats.json
and stats.png into --out and prints the table.
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
  parser.add_argument("--rules", type=pathlib.Path,
                      help="FP8 rules JSON (default: the paper's set for the config)")
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


def run(args: argparse.Namespace) -> int:
  from onerec_jax import quant
  from onerec_jax.errors import InputError
  if args.batch < 1:
    raise InputError(f"--batch must be a positive integer, got {args.batch}")
  out = writable_folder(args.out)
  rules = quant.Rules.from_json(args.rules.read_text()) if args.rules else None
  config, params, source = _load(args)
  from onerec_jax.lab import analysis
  report = analysis.analyze(config, params, rules, batch=args.batch, seed=args.seed)
  report = {"source": source, **report}
  (out / "stats.json").write_text(json.dumps(report, indent=2))
  analysis.plot(report, str(out / "stats.png"))
  print(f"{source}: {len(report['weights'])} weight matrices, "
        f"{len(report['activations'])} quantized modules, batch {args.batch}")
  print(analysis.format_table(report))
  print(f"wrote {out / 'stats.json'} and {out / 'stats.png'}")
  return 0
