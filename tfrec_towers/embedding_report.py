"""Deprecated: moved to ``tfrec_towers.evaluation.embedding_report``; this path works for one more release
(issue 27)."""
import warnings

from tfrec_towers.evaluation.embedding_report import (  # noqa: F401
    COLOURS,
    METHODS,
    format_report,
    project_2d,
    write_embedding_report,
)

warnings.warn("tfrec_towers.embedding_report is deprecated: import from tfrec_towers.evaluation.embedding_report",
              DeprecationWarning, stacklevel=2)
