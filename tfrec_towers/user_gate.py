"""Deprecated: moved to ``tfrec_towers.towers.user_gate``; this path works for one more release (issue 27)."""
import warnings

from tfrec_towers.towers.user_gate import (  # noqa: F401
    UserGate,
)

warnings.warn("tfrec_towers.user_gate is deprecated: import from tfrec_towers.towers.user_gate", DeprecationWarning,
              stacklevel=2)
