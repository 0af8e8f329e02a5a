"""Label smoothing: target = (1 - eps) * one_hot + eps / K (Szegedy et al., 2016)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from autotrick.params import Param, Trick

SMOOTHING = Trick(
    name="smoothing",
    summary="label smoothing: target = (1 - eps) * one_hot + eps / K",
    params=(Param("eps", "float", 0.0, "smoothing epsilon; 0 is off", low=0.0, high=0.3,
                  bounds=(0.0, 0.99)),),
)


def soft_targets(labels: Tensor, num_classes: int, eps: float) -> Tensor:
    """(1 - eps) * one_hot(labels) + eps / K, float32 of shape (N, K); each row sums to 1."""
    one_hot = F.one_hot(labels, num_classes).to(torch.float32)
    return (1 - eps) * one_hot + eps / num_classes


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """mean over the batch of -sum_k targets_k * log_softmax(logits)_k, for soft (N, K) targets."""
    # float32 even under bf16/fp16 autocast: log_softmax over many classes loses too many digits
    # in 8 mantissa bits to tell a smoothed target from a hard one.
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(targets.float() * log_probs).sum(dim=-1).mean()
