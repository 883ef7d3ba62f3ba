"""Retrieval task and the logit transforms / auxiliary losses composed into it."""
from tfrec_towers.tasks.retrieval import (  # noqa: F401
    AuxiliaryLoss,
    LogitTransform,
    LogQCorrection,
    RemoveAccidentalHits,
    Retrieval,
    RetrievalContext,
    Temperature,
)
