"""Networks: each records its parameterization and training schedule, so it becomes a score model in one call.

Networks know nothing of samplers; samplers see them only through :class:`scoregen.ScoreModel`.

Ports of published architectures, with the original parameter names so that original checkpoints load strictly
(:mod:`scoregen.interop` builds them from the original configs): :mod:`.ncsnv2` (NCSNv2), :mod:`.adm` (improved /
guided-diffusion's ADM U-Net and noisy classifier), :mod:`.ncsnpp` (score_sde's NCSN++ / DDPM++ and DDPM), :mod:`.edm`
(EDM's SongUNet, DhariwalUNet and preconditioners). Only NCSNv2 is also a scoregen checkpoint class (``NETWORKS``).
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
