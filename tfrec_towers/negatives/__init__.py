"""Negative sources mixed within one batch: in-batch, catalog (uniform / popularity), per-key
(exposure-unclicked, mined hard negatives), across replicas; and the mixture's logQ correction."""
from tfrec_towers.negatives.catalog import ItemCatalog, KeyedItems  # noqa: F401
from tfrec_towers.negatives.sources import Negatives, build_negatives  # noqa: F401

__all__ = ["ItemCatalog", "KeyedItems", "Negatives", "build_negatives"]
