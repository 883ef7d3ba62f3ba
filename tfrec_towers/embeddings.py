"""Deprecated: moved to ``tfrec_towers.evaluation.embeddings``; this path works for one more release (issue 27)."""
import warnings

from tfrec_towers.evaluation.embeddings import (  # noqa: F401
    embed_catalog,
    embed_events,
)

warnings.warn("tfrec_towers.embeddings is deprecated: import from tfrec_towers.evaluation.embeddings", DeprecationWarning,
              stacklevel=2)
