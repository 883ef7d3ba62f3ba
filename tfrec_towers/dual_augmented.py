"""Deprecated: moved to ``tfrec_towers.towers.dual_augmented``; this path works for one more release (issue 27)."""
import warnings

from tfrec_towers.towers.dual_augmented import (  # noqa: F401
    AugmentedVector,
    MimicLoss,
    category_covariances,
    CategoryAlignmentLoss,
)

warnings.warn("tfrec_towers.dual_augmented is deprecated: import from tfrec_towers.towers.dual_augmented", DeprecationWarning,
              stacklevel=2)
