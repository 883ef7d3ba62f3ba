"""Item frequencies counted over the training logs, for the logQ correction: the static estimator beside
``streaming_frequency.StreamingFrequency`` (learnt from the training stream); both give a batch's
expected count of each item (``expected_count``)."""
import numpy as np
import tensorflow as tf
import tf_keras as keras


__all__ = ["ItemFrequency"]


class ItemFrequency(keras.layers.Layer):
    """Item ID -> q(item), its frequency among training positives (the in-batch sampling probability).

    Unseen IDs get the smallest observed q: a rare item is the safer guess for an unknown one.
    """

    def __init__(self, item_ids, probabilities, **kwargs):
        super().__init__(**kwargs)
        probabilities = np.asarray(probabilities, dtype=np.float32)
        init = tf.lookup.KeyValueTensorInitializer(tf.constant(list(item_ids), tf.string),
                                                   tf.constant(probabilities))
        self.table = tf.lookup.StaticHashTable(init, default_value=float(probabilities.min()))

    def call(self, item_ids):
        return self.table.lookup(item_ids)

    def expected_count(self, item_ids, batch_size, training=False):
        """B q(y): each item's expected count among a batch's B in-batch columns (the estimators'
        shared contract, see ``StreamingFrequency.expected_count``)."""
        return tf.cast(batch_size, tf.float32) * self(item_ids)
