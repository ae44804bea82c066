"""Training objectives, all from the identities x_t = m x0 + sigma eps and score = -eps / sigma."""

from .objectives import (HybridTerms, check_hybrid_network, classifier_loss, ddpm_loss, denoising_loss, drop_labels,
                         hybrid_loss, hybrid_terms, judge_loss, ncsn_loss, sample_times, shift_images)
from .trainer import TrainConfig, train

__all__ = ["denoising_loss", "ddpm_loss", "ncsn_loss", "hybrid_loss", "hybrid_terms", "HybridTerms",
           "check_hybrid_network", "classifier_loss", "judge_loss", "shift_images", "drop_labels", "sample_times", "TrainConfig", "train"]
