"""Deprecated: moved to ``tfrec_towers.towers.generative_interaction``; this path works for one more release (issue 27)."""
import warnings

from tfrec_towers.towers.generative_interaction import (  # noqa: F401
    PseudoQueryGenerator,
    ReconstructionLoss,
)

warnings.warn("tfrec_towers.generative_interaction is deprecated: import from tfrec_towers.towers.generative_interaction", DeprecationWarning,
              stacklevel=2)
