"""Networks: each records its parameterization and training schedule, so it becomes a score model in one call.

Networks know nothing of samplers; samplers see them only through :class:`scoregen.ScoreModel`.
"""

from .embedding import sinusoidal_embedding
from .judge import CNNClassifier
from .mlp import MLPClassifier, MLPScoreNet
from .ncsnv2 import NCSNv2
from .unet import UNet

#: Network classes a checkpoint may name (``config.json``'s ``network.class``).
NETWORKS = {"MLPScoreNet": MLPScoreNet, "MLPClassifier": MLPClassifier, "UNet": UNet, "NCSNv2": NCSNv2,
            "CNNClassifier": CNNClassifier}

__all__ = ["sinusoidal_embedding", "MLPScoreNet", "MLPClassifier", "UNet", "NCSNv2", "CNNClassifier", "NETWORKS"]
