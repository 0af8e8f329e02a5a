"""Knowledge distillation (Hinton et al., 2015): the student also learns the teacher's softened outputs.

L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * task loss
z_s, z_t: the student's and the teacher's logits for the same (augmented, mixed) batch; T, the
temperature, softens both so that the teacher's ranking of the wrong classes carries over; T^2
keeps the gradient's scale independent of T. The task loss is the one the other tricks make
(cross-entropy or focal, on smoothed and mixed targets).

`teacher` is a reference, given, never searched: models:/NAME@alias or runs:/RUN_ID[/model] (a
search's registered model) or an autotrick checkpoint file (autotrick.checkpoint). The teacher
runs in eval mode, without gradients, on the trial's device.

Its logits are computed for every batch, not once per data set: augmentation and mixup change
the inputs at every step, and logits of the clean images would distill the wrong targets.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autotrick.params import Param, Trick, When

_TEACHER = When("teacher", is_set=True)

DISTILL = Trick(
    name="distill",
    summary="distillation: L = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * task loss",
    params=(
        Param("teacher", "str", None, "models:/NAME@alias, runs:/RUN_ID/model or a checkpoint .pt; null is off",
              nullable=True),
        Param("temperature", "float", 4.0, "T: softens both distributions", low=1.0, high=8.0, bounds=(0.05, 100.0),
              when=_TEACHER),
        Param("alpha", "float", 0.5, "weight of the distillation term; 1 - alpha for the task loss",
              low=0.1, high=0.9, bounds=(0.0, 1.0), when=_TEACHER),
    ),
)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, task_loss: Tensor, *,
                      temperature: float, alpha: float) -> Tensor:
    """alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task_loss,
    the KL summed over classes and averaged over the batch."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return alpha * temperature**2 * kl + (1 - alpha) * task_loss


def as_teacher(model: nn.Module, device: torch.device | str) -> nn.Module:
    """`model` on `device`, in eval mode, its parameters frozen: a teacher is never trained."""
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model
