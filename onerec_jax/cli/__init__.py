"""The `onerec-jax` command: one subcommand per module in this package.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`, and a
one-line module docstring used as its help.
"""

import argparse
import importlib
import sys

# Subcommand name -> module under onerec_jax.cli.
SUBCOMMANDS = {
    "convert": "onerec_jax.cli.convert",
    "eval": "onerec_jax.cli.eval",
    "generate": "onerec_jax.cli.generate",
    "stats": "onerec_jax.cli.stats",
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="onerec-jax", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for name, module_name in SUBCOMMANDS.items():
    module = importlib.import_module(module_name)
    help_text = (module.__doc__ or name).strip().splitlines()[0]
    p = sub.add_parser(name, help=help_text, description=module.__doc__)
    module.add_arguments(p)
    p.set_defaults(_run=module.run)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  return args._run(args)


if __name__ == "__main__":
  sys.exit(main())
