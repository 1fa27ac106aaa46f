"""The SAM3D paper's training recipes, one YAML per dataset shipped in the package (``sam3dseg recipes``).

A recipe holds what the paper's code used for a dataset (read from the original SAM3D, an
nnU-Net v1 fork): the cache's encoder, image size and preprocessing (section ``cache``), the
decoder, loss and training settings (section ``run``), and, in words, where sam3dseg cannot
do exactly what the original did (``differs``). ``sam3dseg cache --recipe NAME`` and
``sam3dseg train --recipe NAME`` start from it; a ``--config`` file, ``KEY=VALUE`` overrides
and flags still win.
"""

from __future__ import annotations

from importlib import resources

import yaml

from ...errors import UserError

RECIPES = ("synapse", "acdc", "brats", "lung")


def load_recipe(name: str) -> dict:
    """Recipe ``name``: ``{"about", "paper", "data", "differs": [...], "cache": {...}, "run": {...}}``."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)} (sam3dseg recipes lists them)")
    text = resources.files("sam3dseg").joinpath("recipes", f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def describe_recipes() -> str:
    """What ``sam3dseg recipes`` prints: each recipe, the paper's numbers and what differs."""
    lines = []
    for name in RECIPES:
        r = load_recipe(name)
        lines += [f"{name}: {r['about']}", f"  paper: {r['paper']}", f"  data: {r['data']}", "  differs from the original:"]
        lines += [f"    - {d}" for d in r["differs"]]
        lines.append("")
    return "\n".join(lines)
