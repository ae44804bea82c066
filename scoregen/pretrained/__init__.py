"""Built-in pretrained models: small checkpoints shipped inside the package and loaded by name.

Each model's training settings live in ``recipes.json`` beside this file, as the options of ``scoregen
train``; ``scoregen pretrained build NAME --out DIR`` trains with them and exports the sampling weights
(the EMA copy), so anyone can rebuild a shipped model, or check it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["pretrained_names", "pretrained_path", "pretrained_recipe", "train_argv", "build_environment"]

_HERE = Path(__file__).parent


def _recipes() -> dict:
    with open(_HERE / "recipes.json") as f:
        return json.load(f)


def pretrained_names() -> list[str]:
    """The names of the built-in models, e.g. ``digits-ddpm``."""
    return sorted(_recipes())


def pretrained_recipe(name: str) -> dict:
    """A built-in model's entry in ``recipes.json``: ``description`` and the ``train`` options."""
    recipes = _recipes()
    if name not in recipes:
        raise ValueError(f"no built-in model {name!r}; built-in models: {', '.join(sorted(recipes))}")
    return recipes[name]


def pretrained_path(name: str) -> str:
    """The folder of a built-in model's checkpoint inside the installed package."""
    pretrained_recipe(name)
    path = _HERE / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"built-in model {name!r} is not in this installation ({path} has no config.json); "
                                f"rebuild it with `scoregen pretrained build {name} --out DIR` and load DIR/{name}")
    return os.fspath(path)


def train_argv(name: str) -> list[str]:
    """The ``scoregen train`` options that (re)build a built-in model, as a command line."""
    argv = []
    for key, value in pretrained_recipe(name)["train"].items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False:
            argv += [flag, str(value)]
    return argv


def build_environment() -> dict:
    """What decides the bits of a CPU build besides its recipe: the torch build, the CPU kernel level torch
    dispatches to (e.g. ``AVX512``) and the architecture. A rebuild reproduces a checkpoint bit for bit only where
    these equal the ones recorded in its ``meta["built_on"]``; elsewhere it gives different, equally good weights."""
    import platform

    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine()}
