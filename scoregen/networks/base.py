"""What every scoregen network shares: its constructor config and its score-model view."""

from __future__ import annotations

import inspect
import numbers
from typing import Literal

from torch import nn

from ..io import _short
from ..models import NetworkScoreModel
from ..schedules import schedule_from_config


#: The most repeated blocks (MLP depth, U-Net residual blocks per resolution, resolutions) a network config may
#: ask for: far beyond any useful network, and small enough that checking a config never builds millions of modules.
MAX_BLOCKS = 1024


def _positive_int(name: str, value, most: int | None = None) -> int:
    """A positive integer constructor argument (at most ``most``): a bool or a float (2.0, 1e9) is an error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1 or (most is not None and value > most):
        raise ValueError(f"{name} must be a positive integer" + (f" no larger than {most}" if most is not None else "")
                         + f", got {value!r}")
    return int(value)


class ConfigurableNetwork(nn.Module):
    """A network that stores its JSON-able constructor arguments in ``self._args`` and its ``schedule``,
    so that a checkpoint can rebuild it (:meth:`config` / :meth:`from_config`)."""

    def config(self) -> dict:
        """JSON-able constructor arguments (the schedule as its config): ``from_config`` rebuilds the network."""
        return {**self._args, "schedule": self.schedule.to_config()}

    @classmethod
    def from_config(cls, config: dict):
        """The network :meth:`config` describes (fresh weights: load a state_dict into it).

        Every key must be a constructor argument (an unknown one is refused by name), and a config the
        constructor cannot take raises a ValueError naming the class, never a TypeError. Under
        ``with torch.device("meta"):`` this builds the network without allocating its weights, which is how a
        checkpoint's config is checked against its weight file before anything is allocated.
        """
        if not isinstance(config, dict):
            raise ValueError(f"a {cls.__name__} config is a dict of constructor arguments, got {type(config).__name__}")
        if "schedule" not in config:
            raise ValueError(f"a {cls.__name__} config needs a 'schedule' entry (see {cls.__name__}.config())")
        accepted = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        unknown = sorted(str(k) for k in config if k not in accepted)
        if unknown:
            raise ValueError(f"a {cls.__name__} config has unknown entries {unknown}; {cls.__name__} takes {accepted}")
        args = {k: v for k, v in config.items() if k != "schedule"}
        schedule = schedule_from_config(config["schedule"])
        try:
            return cls(schedule=schedule, **args)
        except (TypeError, AttributeError, OverflowError, IndexError, KeyError, RuntimeError) as e:
            # a missing argument, or a value of the wrong type deep inside torch
            raise ValueError(f"cannot build a {cls.__name__} from the config {_short(args, 300)}: {type(e).__name__}: {e}") from None


class ScoreNetwork(ConfigurableNetwork):
    """A configurable network whose output is an eps / score / x0 / v prediction (``self.parameterization``)
    for samples of ``self.shape``."""

    def score_model(self, time: Literal["nearest", "fractional"] = "fractional") -> NetworkScoreModel:
        """This network as a score model on its own schedule (fractional time: it embeds real-valued labels)."""
        return NetworkScoreModel(self, self.schedule, self.parameterization, shape=self.shape, time=time)
