"""The `onerec-jax` command: one subcommand per module in this package.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`; the first
paragraph of its docstring is its help.
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


def build_parser(names=tuple(SUBCOMMANDS)) -> argparse.ArgumentParser:
  """The parser with the named subcommands (their modules are imported here)."""
  parser = argparse.ArgumentParser(prog="onerec-jax", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for name in names:
    module = importlib.import_module(SUBCOMMANDS[name])
    help_text = " ".join((module.__doc__ or name).strip().split("\n\n")[0].split())
    p = sub.add_parser(name, help=help_text, description=module.__doc__)
    module.add_arguments(p)
    p.set_defaults(_run=module.run)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  # Import only the subcommand asked for: startup stays short and one subcommand's
  # dependencies never break another.
  names = argv[:1] if argv[:1] and argv[0] in SUBCOMMANDS else tuple(SUBCOMMANDS)
  args = build_parser(names).parse_args(argv)
  return args._run(args)


if __name__ == "__main__":
  sys.exit(main())
