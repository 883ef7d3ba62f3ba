"""Mixed negative sampling (Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural
Networks in Recommendations", WWW 2020 companion): the candidates of a batch are its B in-batch
positives plus B' items drawn from the whole catalog and passed through the item tower. In-batch
negatives alone follow the items' training frequency, so cold and rare items are hardly ever
negatives; the catalog draws cover them.

With several sources mixed, column j's logQ correction uses the mixture's expected count of item y_j
among a batch's columns:

    E[y] = B q(y) + sum_s n_s q_s(y)        logits_ij <- logits_ij - log E[y_j]

(q: the in-batch frequency, from log counts or streaming estimation; n_s, q_s: draws and distribution of
catalog source s, uniform 1/N or popularity count^0.75 / Z). Only the ratios across a row matter, so a
per-batch estimate (streaming) and B q (counts) are interchangeable. Per-key sources (exposure, mined)
have no catalog-wide distribution and add nothing to E.
"""
import tensorflow as tf

__all__ = ["mixture_expected_counts"]


#: Smallest expected count, so that log E stays finite for items no source would draw.
MIN_EXPECTED = 1e-8


def mixture_expected_counts(in_batch_expected: tf.Tensor, catalog_rows: tf.Tensor, sources) -> tf.Tensor:
    """E[y] for each column.

    Args:
      in_batch_expected: [N] B q(y_j) (zero where in-batch negatives are off).
      catalog_rows: [N] catalog row of y_j (-1: not in the catalog, never drawn from it).
      sources: (count n_s, probabilities q_s over catalog rows as a [catalog] tensor) pairs.
    """
    expected = in_batch_expected
    safe = tf.maximum(catalog_rows, 0)
    for count, probabilities in sources:
        drawn = tf.cast(count, tf.float32) * tf.gather(probabilities, safe)
        expected += tf.where(catalog_rows >= 0, drawn, 0.0)
    return tf.maximum(expected, MIN_EXPECTED)
