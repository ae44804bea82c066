"""What every scoregen network shares: its constructor config and its score-model view."""

from __future__ import annotations

from typing import Literal

from torch import nn

from ..models import NetworkScoreModel
from ..schedules import schedule_from_config


class ConfigurableNetwork(nn.Module):
    """A network that stores its JSON-able constructor arguments in ``self._args`` and its ``schedule``,
    so that a checkpoint can rebuild it (:meth:`config` / :meth:`from_config`)."""

    def config(self) -> dict:
        """JSON-able constructor arguments (the schedule as its config): ``from_config`` rebuilds the network."""
        return {**self._args, "schedule": self.schedule.to_config()}

    @classmethod
    def from_config(cls, config: dict):
        """The network :meth:`config` describes (fresh weights: load a state_dict into it)."""
        if "schedule" not in config:
            raise ValueError(f"a {cls.__name__} config needs a 'schedule' entry (see {cls.__name__}.config())")
        return cls(schedule=schedule_from_config(config["schedule"]), **{k: v for k, v in config.items() if k != "schedule"})


class ScoreNetwork(ConfigurableNetwork):
    """A configurable network whose output is an eps / score / x0 / v prediction (``self.parameterization``)
    for samples of ``self.shape``."""

    def score_model(self, time: Literal["nearest", "fractional"] = "fractional") -> NetworkScoreModel:
        """This network as a score model on its own schedule (fractional time: it embeds real-valued labels)."""
        return NetworkScoreModel(self, self.schedule, self.parameterization, shape=self.shape, time=time)
