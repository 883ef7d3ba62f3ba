"""Retrieval task and the logit transforms / auxiliary losses composed into it (see ``model.build_task``)."""
from tfrec_towers.tasks.chain import (  # noqa: F401
    AuxiliaryLoss,
    LogitTransform,
    LogQCorrection,
    RemoveAccidentalHits,
    RetrievalContext,
    Temperature,
)
from tfrec_towers.tasks.retrieval import Retrieval  # noqa: F401
from tfrec_towers.tasks.hard_negative_mining import HardNegativeMining  # noqa: F401
from tfrec_towers.tasks.adaptive_temperature_margin import (  # noqa: F401
    AdaptiveSymmetricLoss,
    AdaptiveTemperatureMargin,
)
from tfrec_towers.tasks.margin_loss import HingeLoss  # noqa: F401
from tfrec_towers.tasks.pair import PassageCentricLoss  # noqa: F401
from tfrec_towers.tasks.pointwise_loss import FocalLoss, WeightedBinaryCrossEntropy  # noqa: F401
from tfrec_towers.tasks.samtone import SameTowerNegatives  # noqa: F401
from tfrec_towers.tasks.item_frequency import ItemFrequency  # noqa: F401
from tfrec_towers.tasks.streaming_frequency import StreamingFrequency  # noqa: F401
from tfrec_towers.tasks.cosine_contrastive_loss import CosineContrastiveLoss  # noqa: F401
from tfrec_towers.tasks.bilateral_softmax_loss import BilateralSoftmaxLoss  # noqa: F401

__all__ = ["AdaptiveSymmetricLoss", "AdaptiveTemperatureMargin", "AuxiliaryLoss", "BilateralSoftmaxLoss",
           "CosineContrastiveLoss", "FocalLoss", "HardNegativeMining", "HingeLoss", "ItemFrequency", "LogQCorrection",
           "LogitTransform", "PassageCentricLoss", "RemoveAccidentalHits", "Retrieval", "RetrievalContext",
           "SameTowerNegatives", "StreamingFrequency", "Temperature", "WeightedBinaryCrossEntropy"]
