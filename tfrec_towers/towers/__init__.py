"""The towers and their parts: ``tower`` (the DSSM-style tower, its builder and the extension types it is
built with), ``user_gate`` (SimpleX's gated user tower), ``dual_augmented`` (DAT's augmented vectors and
losses), ``generative_interaction`` (the pseudo query generator and its reconstruction loss)."""
from tfrec_towers.towers.tower import (  # noqa: F401
    Encodings,
    ExtensionsFn,
    ExtraInput,
    Tower,
    TowerExtensions,
    build_towers,
    mlp,
)

__all__ = ["Encodings", "ExtensionsFn", "ExtraInput", "Tower", "TowerExtensions", "build_towers", "mlp"]
