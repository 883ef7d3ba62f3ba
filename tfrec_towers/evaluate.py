"""Deprecated: moved to the ``tfrec_towers.evaluation`` package (``metrics``: the metric functions,
``scoring``: exact chunked scoring, ``job``: evaluating a run or an export, ``embeddings``); this path
works for one more release (issue 27)."""
import warnings

from tfrec_towers.evaluation.embeddings import embed_catalog, embed_events  # noqa: F401
from tfrec_towers.evaluation.job import (  # noqa: F401
    evaluate_run,
    evaluate_saved_model,
    evaluate_users,
    export_version_dir,
    format_metrics,
    saved_model_answers,
)
from tfrec_towers.evaluation.metrics import (  # noqa: F401
    MISSING,
    catalog_metrics,
    metrics_from_ranks,
    recall_ndcg,
    target_ranks,
    top_k,
    user_catalog_metrics,
)

warnings.warn("tfrec_towers.evaluate is deprecated: import from tfrec_towers.evaluation (.job, .metrics, "
              ".embeddings)", DeprecationWarning, stacklevel=2)
