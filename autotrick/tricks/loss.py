"""The classification loss: cross-entropy or focal loss (Lin et al., 2017), on soft targets.

With p = softmax(logits) and soft targets y (label smoothing and mixup make them soft):
ce:     L = -sum_k y_k log p_k
focal:  L = -sum_k a_k y_k (1 - p_k)^gamma log p_k
(1 - p_k)^gamma shrinks the loss of what the model already gets right (p_k near 1), so training
dwells on the hard examples; gamma = 0 without alpha is cross-entropy exactly.
alpha balances the classes: a_k = K n_k^-alpha / sum_j n_j^-alpha, from the count n_k of class k
among the training labels (0: every class alike, 1: inverse frequency; the a_k average 1). null
is off. `focal_loss` also takes any per-class weights, or one scalar, from Python.

Written here: torchvision.ops.sigmoid_focal_loss is the sigmoid (detection) form, and kornia's
focal_loss takes hard labels, not the soft targets that smoothing and mixup make.
"""

import torch.nn.functional as F
from torch import Tensor

from autotrick.params import Param, Trick, When

_FOCAL = When("name", ("focal",))

LOSS = Trick(
    name="loss",
    summary="ce | focal: L = -sum_k a_k y_k (1 - p_k)^gamma log p_k, a_k class weights from alpha",
    params=(
        Param("name", "choice", "ce", "ce: cross-entropy; focal: down-weights the easy examples",
              choices=("ce", "focal")),
        Param("gamma", "float", 2.0, "focusing exponent; 0 is cross-entropy", low=0.5, high=5.0,
              bounds=(0.0, 10.0), when=_FOCAL),
        Param("alpha", "float", None, "class balance a_k ~ n_k^-alpha (1: inverse class frequency); null is off",
              low=0.0, high=1.0, bounds=(0.0, 2.0), nullable=True, when=_FOCAL),
    ),
)

# (1 - p)^gamma has an infinite slope at p = 1 for gamma < 1; p rounds to 1 for a confident
# prediction, where the term is 0 anyway: a floor keeps its gradient finite (0, not NaN).
_FLOOR = 1e-12


def class_weights(counts: Tensor, alpha: float) -> Tensor:
    """a_k = K n_k^-alpha / sum_j n_j^-alpha for the class counts n_k (a class never seen counts as 1)."""
    weights = counts.float().clamp(min=1) ** -alpha
    return weights * (len(weights) / weights.sum())


def focal_loss(logits: Tensor, targets: Tensor, *, gamma: float, alpha: Tensor | float | None = None) -> Tensor:
    """mean over the batch of -sum_k a_k y_k (1 - p_k)^gamma log p_k for soft (N, K) targets;
    `alpha` is the per-class weights a (K,), one scalar for every class, or None for 1."""
    # float32 under autocast, as soft_cross_entropy: log_softmax loses too many digits in bf16
    log_p = F.log_softmax(logits.float(), dim=-1)
    terms = targets.float() * (1 - log_p.exp()).clamp(min=_FLOOR).pow(gamma) * log_p
    if alpha is not None:
        terms = terms * (alpha.to(terms.device) if isinstance(alpha, Tensor) else alpha)
    return -terms.sum(dim=-1).mean()
