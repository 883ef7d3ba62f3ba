"""Dual augmented towers, DAT (Yu et al., "A Dual Augmented Two-tower Model for Online Large-scale
Recommendation", DLP-KDD 2021, Meituan).

Two towers meet only at the final dot product, so neither sees the other side while it encodes. DAT
gives each user an augmented vector a_u and each item a_v (ID embeddings of the output dimension),
fed into its own tower's input, and trains them on positive pairs to mimic the other tower's output:

    L_mimic = lambda_u mean_i ||a_u(i) - sg(p_v(i))||^2 + lambda_v mean_i ||a_v(i) - sg(p_u(i))||^2

(sg = stop-gradient: the augmented vectors learn the other side, the towers are not pulled towards
them; lambda = 0.5 each as in the paper). a_u thereby carries what the item side "thinks" of the user
into the user tower, and vice versa. a_u and a_v also receive the main loss's gradient as tower inputs.

Category alignment (CAL): items of a rare category get few updates; the loss pulls the covariance of
each category's item embeddings in the batch towards that of the batch's majority category M:

    L_CA = sum_{k != M, n_k >= 2} || C_k - C_M ||_F^2,   C_k = (1/n_k) sum_{i in k} (p_i - mu_k)(p_i - mu_k)^T

An item's category is the first value of the configured candidate feature (e.g. the first genre).
"""
import tensorflow as tf
import tf_keras as keras

from tfrec_towers.tasks.chain import AuxiliaryLoss, RetrievalContext, Untracked


__all__ = ["AugmentedVector", "CategoryAlignmentLoss", "MimicLoss", "category_covariances"]


class AugmentedVector(keras.layers.Layer):
    """ID -> a (dim); OOV IDs share one vector. Called as a tower's extra input ``layer(features, x)``."""

    def __init__(self, feature: str, vocabulary, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.feature = feature
        self.lookup = keras.layers.StringLookup(vocabulary=list(vocabulary), num_oov_indices=1)
        self.embedding = keras.layers.Embedding(len(vocabulary) + 1, dim)

    def call(self, features, x=None):
        if self.feature not in features:
            raise KeyError(f"dual augmented towers: the augmented vector is keyed by '{self.feature}', "
                           "which is not in the batch")
        ids = tf.reshape(features[self.feature], [-1])
        return self.embedding(self.lookup(ids))


class MimicLoss(AuxiliaryLoss):
    """weight * (||a_u - sg(p_v)||^2 + ||a_v - sg(p_u)||^2) over positive pairs: the paper's
    lambda_u = lambda_v = ``weight`` (0.5 there), applied by the task as every auxiliary weight is."""

    def __init__(self, user_vector: AugmentedVector, item_vector: AugmentedVector, weight: float = 0.5, **kwargs):
        super().__init__(weight=weight, **kwargs)
        self.refs = Untracked(user=user_vector, item=item_vector)

    def call(self, context: RetrievalContext):
        a_u, a_v = self.refs.user(context.features), self.refs.item(context.features)
        p_u, p_v = tf.stop_gradient(context.query_embeddings), tf.stop_gradient(context.positive_embeddings)
        user = context.positive_mean(tf.reduce_sum(tf.square(a_u - p_v), -1))
        item = context.positive_mean(tf.reduce_sum(tf.square(a_v - p_u), -1))
        return user + item


def category_covariances(embeddings: tf.Tensor, categories: tf.Tensor):
    """(covariances [K, d, d], counts [K], index of the majority category) of the batch's categories."""
    names, segment = tf.unique(categories)
    k = tf.shape(names)[0]
    onehot = tf.one_hot(segment, k, dtype=embeddings.dtype)                  # [B, K]
    counts = tf.reduce_sum(onehot, axis=0)                                   # [K]
    means = tf.linalg.matmul(onehot, embeddings, transpose_a=True) / counts[:, None]
    centred = embeddings[None, :, :] - means[:, None, :]                     # [K, B, d]
    weighted = centred * tf.transpose(onehot)[:, :, None]
    covariances = tf.linalg.matmul(weighted, centred, transpose_a=True) / counts[:, None, None]
    return covariances, counts, tf.argmax(counts, output_type=tf.int32)


class CategoryAlignmentLoss(AuxiliaryLoss):
    """sum over the batch's categories k != majority (with >= 2 items) of ||C_k - C_M||_F^2."""

    def __init__(self, category: str, weight: float = 1.0, **kwargs):
        super().__init__(weight=weight, **kwargs)
        self.category = category

    def call(self, context: RetrievalContext):
        values = context.features[self.category]
        categories = tf.reshape(values, [tf.shape(values)[0], -1])[:, 0] if values.shape.rank > 1 else values
        covariances, counts, majority = category_covariances(context.positive_embeddings, categories)
        distance = tf.reduce_sum(tf.square(covariances - covariances[majority]), axis=[1, 2])
        return tf.reduce_sum(tf.where(counts >= 2, distance, 0.0))
