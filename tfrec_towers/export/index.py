"""What every index type of an export shares, in the spirit of ``tfrs.layers.factorized_top_k.TopK``
and keras-rs's retrieval layers: a fixed catalog of (ids, embeddings), ``k``, the parameters it was
built with, and one call contract, ``index(queries [B, D]) -> (scores [B, k], ids [B, k])``, best first.
"""
from typing import ClassVar, Dict, Tuple

import numpy as np
import tensorflow as tf


class Index(tf.Module):
    """Base of the index types: checks the catalog once and holds ``k`` (at most the catalog size)
    and ``params`` (the tuned or given build parameters, reported in the export's metadata)."""

    kind: ClassVar[str] = ""

    def __init__(self, ids: np.ndarray, embeddings: np.ndarray, k: int, name: str):
        super().__init__(name=name)
        n = len(ids)
        if n == 0:
            raise ValueError("cannot build an index over an empty catalog")
        shape = np.shape(embeddings)
        if len(shape) != 2 or shape[0] != n:
            raise ValueError(f"the catalog's embeddings must be [{n}, D] for its {n} ids, got shape {shape}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = min(int(k), n)
        self.params: Dict = {}

    @staticmethod
    def id_variable(ids: np.ndarray, name: str = "ids") -> tf.Variable:
        """The catalog's IDs as a string variable (saved with the index)."""
        return tf.Variable(np.asarray(ids, dtype=object).astype(bytes), trainable=False, name=name)

    def __call__(self, queries: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        raise NotImplementedError
