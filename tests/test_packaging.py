"""pyproject.toml lists every package folder (kernels/ installs as onerec_kernels,
checkpoints/ as onerec_checkpoints, its demo/ as a data folder)."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
  config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
  listed = set(config["packages"])
  found = set()
  for top, name in (("onerec_jax", "onerec_jax"), ("kernels", "onerec_kernels"),
                    ("checkpoints", "onerec_checkpoints")):
    for init in (ROOT / top).rglob("__init__.py"):
      rel = init.parent.relative_to(ROOT / top).parts
      found.add(".".join((name, *rel)))
  data = set(config["package-data"])
  assert data == {"onerec_checkpoints.demo"}
  assert found | data == listed, {"missing": sorted(found | data - listed),
                                  "extra": sorted(listed - found - data)}
  assert config["package-dir"] == {"onerec_kernels": "kernels",
                                   "onerec_checkpoints": "checkpoints"}
  demo = ROOT / "checkpoints" / "demo"
  shipped = {p.name for p in demo.iterdir()}
  patterns = config["package-data"]["onerec_checkpoints.demo"]
  assert all(any(p.match(g) for g in patterns) for p in demo.iterdir()), shipped
