"""The `onerec-jax` command: one subcommand per module in this package.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`; the first
paragraph of its docstring is its help. A bad input (onerec_jax.errors.InputError, or a
file the system cannot open) is reported in one line with exit code 2, before any device
work wherever it can be known then; --debug shows the traceback instead.
"""

import argparse
import importlib
import sys
import time

# When the command began: this package is imported first, before jax and the model.
STARTED = time.perf_counter()

# Subcommand name -> module under onerec_jax.cli.
SUBCOMMANDS = {
    "convert": "onerec_jax.cli.convert",
    "eval": "onerec_jax.cli.eval",
    "generate": "onerec_jax.cli.generate",
    "stats": "onerec_jax.cli.stats",
}
EXIT_INPUT_ERROR = 2  # as argparse's own usage errors
EXIT_INTERRUPTED = 130


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the docstrings' paragraphs and appends each option's default to its help
  (options without a default, or off by default, show none)."""

  def _get_help_string(self, action):
    text = action.help or ""
    if ("%(default)" not in text and action.option_strings
        and action.default not in (None, False, argparse.SUPPRESS)):
      text += " (default: %(default)s)"
    return text


def build_parser(names=tuple(SUBCOMMANDS)) -> argparse.ArgumentParser:
  """The parser with the named subcommands (their modules are imported here)."""
  parser = argparse.ArgumentParser(prog="onerec-jax", description=__doc__.splitlines()[0],
                                   formatter_class=HelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for name in names:
    module = importlib.import_module(SUBCOMMANDS[name])
    help_text = " ".join((module.__doc__ or name).strip().split("\n\n")[0].split())
    p = sub.add_parser(name, help=help_text, description=module.__doc__,
                       formatter_class=HelpFormatter)
    module.add_arguments(p)
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error instead of its one-line message")
    p.set_defaults(_run=module.run)
  return parser


def one_line(error: BaseException) -> str:
  """The error's message on one line."""
  text = str(error).strip() or type(error).__name__
  return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
  from onerec_jax.errors import InputError
  argv = sys.argv[1:] if argv is None else argv
  # Import only the subcommand asked for: startup stays short and one subcommand's
  # dependencies never break another.
  names = argv[:1] if argv[:1] and argv[0] in SUBCOMMANDS else tuple(SUBCOMMANDS)
  args = build_parser(names).parse_args(argv)
  try:
    return args._run(args)
  except (InputError, OSError) as e:
    if args.debug:
      raise
    print(f"onerec-jax {args.command}: error: {one_line(e)}", file=sys.stderr)
    return EXIT_INPUT_ERROR
  except KeyboardInterrupt:
    if args.debug:
      raise
    print(f"onerec-jax {args.command}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":
  sys.exit(main())
