"""The Python examples of the docs run as written: every ```python block of these pages,
in order, in one namespace per page."""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
RUNNABLE = ("quickstart.md", "generate.md", "fp8.md", "qwen3.md")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("page", RUNNABLE)
def test_examples_run(page, capsys):
  blocks = BLOCK.findall((DOCS / page).read_text())
  assert blocks, f"{page} has no Python example"
  namespace = {"__name__": f"docs.{page}"}
  for code in blocks:
    exec(compile(code, str(DOCS / page), "exec"), namespace)  # noqa: S102 (our own docs)


ROOT = DOCS.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")  # a markdown link's target
UP = re.compile(r"(?<![\w./])((?:\.\./)+[\w./-]*\w)")  # a path that climbs
# A path in the repository as a page names it: a top folder, then anything but spaces; a
# trailing "*" makes it a pattern.
REPO_PATH = re.compile(r"(?<![\w./$-])((?:bench|docs|scripts|tests|kernels|onerec_jax|"
                       r"checkpoints)/[\w./-]*\w(?:\*[\w.-]*\w)?)")


def test_every_path_a_page_names_is_in_the_repository():
  """README and every doc stand on their own: each link and each path they name (a
  pattern: at least one match) is a file or folder of this repository, none above it."""
  pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted(ROOT.glob("*/README.md"))]
  for page in pages:
    text = page.read_text()
    targets = [(page.parent, t.split("#")[0]) for t in LINK.findall(text)
               if not t.startswith(("http://", "https://", "#", "mailto:"))]
    targets += [(page.parent, t) for t in UP.findall(text)]
    targets += [(ROOT, t) for t in REPO_PATH.findall(text)]
    for base, target in targets:
      path = (base / target).resolve()
      assert path.is_relative_to(ROOT), f"{page.name}: {target} is outside the repository"
      found = any(path.parent.glob(path.name)) if "*" in target else path.exists()
      assert found, f"{page.name}: {target} does not exist"
