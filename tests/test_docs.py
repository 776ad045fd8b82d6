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


def test_no_page_points_outside_the_repository():
  for page in DOCS.glob("*.md"):
    text = page.read_text()
    assert "DESIGN.md" not in text and "../shared" not in text, page.name
