"""Cosine similarities between embeddings (towers need not be L2-normalised for the objectives that use
them: SamToNe's same-tower columns, PAIR, the adaptive temperature and margin)."""
import tensorflow as tf


__all__ = ["cosine", "row_cosine"]


def cosine(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[A, B] cosine similarities of the rows of ``a`` and ``b``."""
    return tf.linalg.matmul(tf.math.l2_normalize(a, -1), tf.math.l2_normalize(b, -1), transpose_b=True)


def row_cosine(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[B] cosine of row i of ``a`` with row i of ``b``."""
    return tf.reduce_sum(tf.math.l2_normalize(a, -1) * tf.math.l2_normalize(b, -1), -1)
