"""A clean-image classifier to judge generated images: a small CNN, no noise-level input.

Unlike :class:`~scoregen.networks.MLPClassifier` (noise-conditional, for classifier guidance), this network sees
clean images only. It is a different family from every network that samples or guides, so the class histogram of
generated images, and a Frechet distance in its feature space (:meth:`CNNClassifier.features`), are not scored by
the network that steered them. The built-in ``digits-judge`` is one, trained by ``scoregen train --objective
judge`` on a held-out split of the digits.
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from .._checks import check_int
from .base import MAX_SIZE

__all__ = ["CNNClassifier"]


class CNNClassifier(nn.Module):
    """``net(x) -> logits`` (B, num_classes) and ``net.features(x) -> (B, feature_dim)`` for clean images x of shape
    (B, in_channels, image_size, image_size), in the range the network was trained on ([-1, 1] for scoregen's images).

    Three 3x3 convolutions, each followed by GroupNorm and SiLU (``in_channels -> channels -> 2 channels``, a 2x2
    average pool, ``-> 2 channels``), the flattened map through a linear layer to ``feature_dim`` features with
    SiLU (the penultimate layer, :meth:`features`), and a linear layer to the logits. The defaults for 8x8 digits:
    122k parameters. There is no noise-level input, so it cannot guide sampling (:meth:`classifier` says so).
    """

    #: No noise schedule: the network sees clean data only (the trainer and the command line check this).
    schedule = None
    #: Not a score network.
    parameterization = None

    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: int = 10, channels: int = 32,
                 feature_dim: int = 64, groups: int = 8):
        super().__init__()
        in_channels = check_int("in_channels", in_channels, 1, MAX_SIZE)
        image_size = check_int("image_size", image_size, 2, MAX_SIZE)
        num_classes = check_int("num_classes", num_classes, 2, MAX_SIZE)
        channels = check_int("channels", channels, 1, MAX_SIZE // 2)
        feature_dim = check_int("feature_dim", feature_dim, 1, MAX_SIZE)
        groups = check_int("groups", groups, 1, MAX_SIZE)
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be a multiple of groups ({groups}) for GroupNorm")
        pooled = image_size // 2
        if (2 * channels) * pooled * pooled > MAX_SIZE:
            raise ValueError(f"image_size {image_size} with {channels} channels flattens to more than {MAX_SIZE} "
                             "features: this network is for small images")
        self.num_classes, self.feature_dim = num_classes, feature_dim
        self.shape = (in_channels, image_size, image_size)
        self._args = dict(in_channels=in_channels, image_size=image_size, num_classes=num_classes, channels=channels,
                          feature_dim=feature_dim, groups=groups)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU())

        self.conv = nn.Sequential(block(in_channels, channels), block(channels, 2 * channels), nn.AvgPool2d(2),
                                  block(2 * channels, 2 * channels))
        self.feature = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * pooled * pooled, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)

    # ------------------------------------------------------------------------------------------- config
    def config(self) -> dict:
        """JSON-able constructor arguments: :meth:`from_config` rebuilds the network (no schedule: it has none)."""
        return dict(self._args)

    @classmethod
    def from_config(cls, config: dict) -> "CNNClassifier":
        """The network :meth:`config` describes (fresh weights); unknown or missing entries raise a ValueError."""
        if not isinstance(config, dict):
            raise ValueError(f"a {cls.__name__} config is a dict of constructor arguments, got {type(config).__name__}")
        signature = inspect.signature(cls)
        try:
            bound = signature.bind(**config)
        except TypeError as e:
            raise ValueError(f"a {cls.__name__} config does not fit {cls.__name__}({', '.join(signature.parameters)}): "
                             f"{e}") from None
        return cls(*bound.args, **bound.kwargs)

    # ------------------------------------------------------------------------------------------ forward
    def _check(self, x: Tensor, extra: tuple) -> None:
        if extra:
            raise TypeError(f"{type(self).__name__} classifies clean images: call it as net(x); it takes no noise "
                            "level or time, so it cannot guide sampling (use a noise-conditional classifier, e.g. "
                            "the built-in digits-classifier's net.classifier())")
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{type(self).__name__} takes images of shape (B, {', '.join(map(str, self.shape))}), got "
                             f"{tuple(getattr(x, 'shape', ())) if isinstance(x, Tensor) else type(x).__name__}")

    def features(self, x: Tensor, *extra) -> Tensor:
        """The penultimate activations (B, feature_dim): the feature space for Frechet distances."""
        self._check(x, extra)
        return self.feature(self.conv(x))

    def forward(self, x: Tensor, *extra) -> Tensor:
        """Logits (B, num_classes) for clean images x of shape (B, C, H, W)."""
        return self.head(self.features(x, *extra))

    def classifier(self, *args, **kwargs):
        """Refused: classifier guidance needs ``p(y | x_t)`` at every noise level, and this network has no noise-level
        input (it was trained on clean images). Guide with a noise-conditional classifier such as ``digits-classifier``."""
        raise ValueError(f"{type(self).__name__} is a clean-image classifier (a judge of samples, e.g. digits-judge): it "
                         "has no noise-level input, so it cannot guide sampling; guide with a noise-conditional "
                         "classifier such as digits-classifier, and use this one to score the samples")

