"""The losses over the chain's [rows, columns] logits, by name: ``LOSSES``, the registry of ``task.loss``.

Each name maps to a ``LossKind``: how to build the loss from the task section of the config, and
whether the batch recall@k metrics apply (the loss ranks each row's columns, one positive each).
This dict literal is the only place a loss is named: ``tfrec_towers.choices`` reads its keys (and
``pointwise``, a literal) from this file's source, for the config below this layer, which checks
``task.loss`` when it is loaded. Adding a loss: its layer in its own module, its entry here, its test.
"""
import dataclasses
from typing import Any, Callable

import tf_keras as keras

from tfrec_towers.tasks.bilateral_softmax_loss import BilateralSoftmaxLoss
from tfrec_towers.tasks.cosine_contrastive_loss import CosineContrastiveLoss
from tfrec_towers.tasks.margin_loss import HingeLoss
from tfrec_towers.tasks.pointwise_loss import FocalLoss, WeightedBinaryCrossEntropy
from tfrec_towers.tasks.reduction import REDUCTIONS


__all__ = ["LOSSES", "loss_kind"]


@dataclasses.dataclass(frozen=True)
class LossKind:
    #: The task section of the config (``config.TaskConfig``) -> the loss.
    build: Callable[[Any], keras.losses.Loss]
    #: Whether ``task.batch_recall_k`` metrics are reported (a softmax-like loss ranking each row's columns).
    batch_recall: bool = False
    #: Whether every event trains with its label as the target (else positives only): ``choices.POINTWISE_LOSSES``
    #: (read from the source: write it as a literal).
    pointwise: bool = False


def _softmax(t) -> keras.losses.Loss:
    return keras.losses.CategoricalCrossentropy(from_logits=True, reduction=REDUCTIONS[t.loss_reduction])


def _ccl(t) -> keras.losses.Loss:
    if t.temperature or t.logq:
        raise ValueError("task.loss ccl reads cosines (its margin is in cosine units): set task.temperature "
                         "to null and task.logq to false")
    return CosineContrastiveLoss(t.ccl_margin, t.ccl_negative_weight, t.loss_reduction)


#: ``task.loss`` -> its ``LossKind``.
LOSSES = {
    "softmax": LossKind(_softmax, batch_recall=True),
    "hinge": LossKind(lambda t: HingeLoss(t.margin, t.loss_reduction)),
    "bce": LossKind(lambda t: WeightedBinaryCrossEntropy(t.positive_weight, t.negative_weight, t.loss_reduction),
                    pointwise=True),
    "focal": LossKind(lambda t: FocalLoss(t.focal_gamma, t.focal_alpha, t.loss_reduction), pointwise=True),
    "ccl": LossKind(_ccl, batch_recall=True),
    "bsl": LossKind(lambda t: BilateralSoftmaxLoss(t.bsl_tau2, t.loss_reduction), batch_recall=True),
}


def loss_kind(name: str) -> LossKind:
    """The ``LossKind`` of loss ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in LOSSES:
        raise ValueError(f"task.loss must be one of {tuple(LOSSES)}, got {name!r}")
    return LOSSES[name]
