"""pyproject.toml lists every package folder (kernels/ installs as onerec_kernels)."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
  config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
  listed = set(config["packages"])
  found = set()
  for top, name in (("onerec_jax", "onerec_jax"), ("kernels", "onerec_kernels")):
    for init in (ROOT / top).rglob("__init__.py"):
      rel = init.parent.relative_to(ROOT / top).parts
      found.add(".".join((name, *rel)))
  assert found == listed, {"missing": sorted(found - listed), "extra": sorted(listed - found)}
  assert config["package-dir"] == {"onerec_kernels": "kernels"}
