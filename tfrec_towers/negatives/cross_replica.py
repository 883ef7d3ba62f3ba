"""Negatives from every replica: under a distribution strategy each replica's rows also score the
candidates of the other replicas, so a global batch of R x B rows gets R x B in-batch negatives per
row instead of B (as when the batch were trained on one device).

The gathered candidates are rotated so that this replica's own rows come first: the task keeps its
convention that row i's positive is column i. Gradients flow back to the replica that computed each
candidate (``all_gather`` is differentiable).
"""
import tensorflow as tf


__all__ = ["gather_across_replicas"]


def gather_across_replicas(*columns: tf.Tensor):
    """Each [n, ...] tensor -> [sum of n over replicas, ...], this replica's rows first. A no-op
    outside a multi-replica strategy."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return columns
    n = tf.shape(columns[0])[0]
    sizes = context.all_gather(tf.reshape(n, [1]), axis=0)
    start = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
    out = []
    for x in columns:
        gathered = context.all_gather(x, axis=0)
        out.append(tf.roll(gathered, shift=-start, axis=0))
    return tuple(out)
