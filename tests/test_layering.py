"""The layers depend one way: onerec_kernels <- quant <- model <- checkpoint, generate <-
lab <- cli. Every import in the product's source is read (ast) and checked against the
table below, and onerec_kernels imports only jax (numpy for host arrays), the standard
library and, in its Triton backends, triton and jax_triton."""

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Layer of each module prefix, lowest first; a module may import its own layer and lower
# ones, never a higher one, and never a sibling of its own layer (checkpoint and generate
# stand side by side).
LAYERS = [
    ("onerec_kernels", 0),
    ("onerec_checkpoints", 0),
    ("onerec_jax.errors", 1), ("onerec_jax.cache", 1),
    ("onerec_jax.quant", 2),
    ("onerec_jax.config", 3), ("onerec_jax.model", 3),
    ("onerec_jax.checkpoint", 4), ("onerec_jax.generate", 4),
    ("onerec_jax.lab", 5),
    ("onerec_jax.cli", 6), ("onerec_jax.__main__", 6), ("onerec_jax", 6),
]
SIBLINGS = {"onerec_jax.checkpoint", "onerec_jax.generate"}
KERNEL_DEPENDENCIES = {"jax", "jaxlib", "numpy", "triton", "jax_triton"}


def _layer(module: str) -> tuple[str, int] | None:
  for prefix, rank in LAYERS:
    if module == prefix or module.startswith(prefix + "."):
      return prefix, rank
  return None


def _modules():
  """(module name, path) of every product source file."""
  for top, name in (("onerec_jax", "onerec_jax"), ("kernels", "onerec_kernels"),
                    ("checkpoints", "onerec_checkpoints")):
    for path in sorted((ROOT / top).rglob("*.py")):
      parts = path.relative_to(ROOT / top).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      yield ".".join((name, *parts)), path


def _imports(path: pathlib.Path):
  """Absolute module names imported anywhere in the file (function bodies included)."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield from (f"{node.module}.{a.name}" for a in node.names)  # names or submodules


def test_imports_point_down_the_layers():
  bad = []
  for module, path in _modules():
    own_prefix, own = _layer(module)
    for target in set(_imports(path)):
      found = _layer(target)
      if found is None:
        continue
      prefix, rank = found
      sibling = prefix != own_prefix and {prefix, own_prefix} <= SIBLINGS
      if rank > own or sibling:
        bad.append(f"{module} imports {target}")
  assert not bad, bad


def test_kernels_depend_on_jax_only():
  stdlib = sys.stdlib_module_names
  bad = []
  for module, path in _modules():
    if not module.startswith("onerec_kernels"):
      continue
    for target in set(_imports(path)):
      top = target.split(".")[0]
      if top not in stdlib and top not in KERNEL_DEPENDENCIES and top != "onerec_kernels":
        bad.append(f"{module} imports {target}")
  assert not bad, bad


def test_the_layer_table_knows_every_module():
  assert all(_layer(m) is not None for m, _ in _modules())
