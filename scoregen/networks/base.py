"""What every scoregen network shares: its constructor config, its score-model view, and random initial
weights that cost nothing on the meta device."""

from __future__ import annotations

import inspect
from typing import Literal

import torch
from torch import Tensor, nn

from ..models import NetworkScoreModel
from ..schedules import schedule_from_config


#: The most repeated blocks (MLP depth, U-Net residual blocks per resolution, resolutions) a network config may
#: ask for: far beyond any useful network, and small enough that checking a config never builds millions of modules.
MAX_BLOCKS = 1024
#: The largest size (a width, a channel count, a number of classes, an image side) a network config may ask for:
#: far beyond any useful network, and small enough that no layer's element count nears torch's 64-bit limit, so
#: that building any config on the meta device (which is how a checkpoint's config is checked) cannot overflow.
MAX_SIZE = 2**24


def standard_normal(*shape: int) -> Tensor:
    """``torch.randn(*shape)``: the same numbers, drawn from the global generator in the same order, except on
    the meta device (``with torch.device("meta")``, where a checkpoint's config is checked against its weights),
    where nothing is drawn: random ops there import torch._dynamo and sympy (over a second), and a meta tensor
    holds no values anyway."""
    t = torch.empty(shape)
    return t if t.is_meta else t.normal_()


def check_learned_variance(learned_variance: object) -> bool:
    """The ``learned_variance`` constructor argument, checked: a bool (a config may carry anything)."""
    if not isinstance(learned_variance, bool):
        raise ValueError(f"learned_variance must be True or False, got {learned_variance!r}")
    return learned_variance


def learned_variance_arg(learned_variance: bool) -> dict:
    """The config entry for ``learned_variance``: present only when True, so that the config of every other network,
    and so every checkpoint written before the option existed, stays exactly what it was (resume compares configs)."""
    return {"learned_variance": True} if learned_variance else {}


class ConfigurableNetwork(nn.Module):
    """A network that stores its JSON-able constructor arguments in ``self._args`` and its ``schedule``,
    so that a checkpoint can rebuild it (:meth:`config` / :meth:`from_config`)."""

    def config(self) -> dict:
        """JSON-able constructor arguments (the schedule as its config): ``from_config`` rebuilds the network."""
        return {**self._args, "schedule": self.schedule.to_config()}

    @classmethod
    def from_config(cls, config: dict):
        """The network :meth:`config` describes (fresh weights: load a state_dict into it).

        The entries must be the constructor's arguments: an unknown or a missing one raises a ValueError naming
        the class and the argument, and the constructor checks every value (a ValueError naming it). Under
        ``with torch.device("meta"):`` this builds the network without allocating its weights, which is how a
        checkpoint's config is checked against its weight file before anything is allocated.
        """
        if not isinstance(config, dict):
            raise ValueError(f"a {cls.__name__} config is a dict of constructor arguments, got {type(config).__name__}")
        if "schedule" not in config:
            raise ValueError(f"a {cls.__name__} config needs a 'schedule' entry (see {cls.__name__}.config())")
        args = {k: v for k, v in config.items() if k != "schedule"}
        schedule = schedule_from_config(config["schedule"])
        signature = inspect.signature(cls)
        try:
            bound = signature.bind(schedule=schedule, **args)
        except TypeError as e:  # an unknown entry, a missing argument (or a key that is not a string)
            raise ValueError(f"a {cls.__name__} config does not fit {cls.__name__}({', '.join(signature.parameters)}): "
                             f"{e}") from None
        return cls(*bound.args, **bound.kwargs)


class ScoreNetwork(ConfigurableNetwork):
    """A configurable network whose output is an eps / score / x0 / v prediction (``self.parameterization``)
    for samples of ``self.shape``; with ``learned_variance`` also a reverse-step variance value (objective ``hybrid``)."""

    #: True when the output also holds improved-diffusion's variance channels (twice the input's channels, dim 1).
    learned_variance: bool = False

    def score_model(self, time: Literal["nearest", "fractional"] = "fractional") -> NetworkScoreModel:
        """This network as a score model on its own schedule (fractional time: it embeds real-valued labels)."""
        return NetworkScoreModel(self, self.schedule, self.parameterization, shape=self.shape, time=time)
