"""mixup and cutmix: train on convex combinations of pairs of examples and of their soft targets.

mixup:  x = lam * x_i + (1 - lam) * x_j,             lam ~ Beta(alpha, alpha)
cutmix: x = x_i with a box from x_j pasted in,       lam = 1 - box area / image area
both:   y = lam * y_i + (1 - lam) * y_j (y already label-smoothed, so it still sums to 1).
With both alphas > 0, each batch uses one of the two at random (as timm does).
"""

from autotrick.params import Param, Trick

MIX = Trick(
    name="mix",
    summary="mixup / cutmix: x = lam*x_i + (1-lam)*x_j, y likewise, lam ~ Beta(alpha, alpha)",
    params=(
        Param("mixup_alpha", "float", 0.0, "mixup Beta(alpha, alpha); 0 is off", low=0.0, high=1.0,
              bounds=(0.0, 10.0)),
        Param("cutmix_alpha", "float", 0.0, "cutmix Beta(alpha, alpha); 0 is off", low=0.0, high=1.0,
              bounds=(0.0, 10.0)),
    ),
)
