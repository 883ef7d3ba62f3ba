"""SequenceFeature.gradient_share: the pooled history keeps its value, and the table's gradient is an
unbiased estimate through about p x the history rows."""
import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfrec_towers.features import spec as S
from tfrec_towers.features.encoders import LookupEmbedding, SequenceEncoder

VOCAB = [f"i{k}" for k in range(30)]
HISTORY = tf.constant([[f"i{k}" for k in range(20)], ["i3", "i4", "i5", "", "", "", "", "", "", "", "", "", "", "",
                                                      "", "", "", "", "", ""], [""] * 20])
WEIGHTS = tf.constant([[1.0, -2.0, 0.5, 3.0], [0.5, 1.0, -1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])


def gradient_fn(encoder):
    """A compiled step: (pooled [B, D], dense table gradient, number of gradient rows sent)."""
    encoder(HISTORY)  # built
    table = encoder.table.embedding.embeddings

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            pooled = encoder(HISTORY, training=True)
            loss = tf.reduce_sum(pooled * WEIGHTS)
        slices = tape.gradient(loss, table)
        return pooled, tf.convert_to_tensor(slices), tf.shape(slices.indices)[0]
    return step


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_value_is_exact_and_gradient_is_unbiased_through_fewer_rows(pooling):
    keras.utils.set_random_seed(0)
    table = LookupEmbedding(vocabulary=VOCAB, dim=4)
    exact_encoder, sampled = SequenceEncoder(table, 20, pooling), SequenceEncoder(table, 20, pooling, 0.25)
    want_value, want_grad, want_rows = gradient_fn(exact_encoder)()
    step, draws, rows = gradient_fn(sampled), [], []
    for _ in range(3000):
        value, grad, sent = step()
        np.testing.assert_allclose(value.numpy(), want_value.numpy(), rtol=1e-6, atol=1e-6)
        draws.append(grad.numpy())
        rows.append(int(sent))
    draws = np.stack(draws)
    # each row's gradient is (1/p) Bernoulli(p) x the exact one: mean within 5 standard errors
    stderr = draws.std(axis=0) / np.sqrt(len(draws)) + 1e-6
    assert np.all(np.abs(draws.mean(axis=0) - want_grad.numpy()) <= 5 * stderr)
    assert np.abs(draws.mean(axis=0) - want_grad.numpy()).max() < 0.1 * np.abs(want_grad.numpy()).max()
    assert int(want_rows) == 23 and 0.15 < np.mean(rows) / 23 < 0.35   # about p x the 23 history rows
    # outside training (evaluation, export) the encoder is the plain one
    np.testing.assert_allclose(sampled(HISTORY).numpy(), exact_encoder(HISTORY).numpy(), rtol=1e-6)


def test_gradient_share_is_checked_in_the_spec():
    assert S.SequenceFeature("h", vocab_from="item_id", gradient_share=0.2).gradient_share == 0.2
    for bad in (0, 1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match="feature 'h': gradient_share must be a number in \\(0, 1\\]"):
            S.SequenceFeature("h", vocab_from="item_id", gradient_share=bad)
    with pytest.raises(ValueError, match="feature 'h': gradient_share < 1 needs mean or sum pooling"):
        S.SequenceFeature("h", vocab_from="item_id", pooling="attention", gradient_share=0.5)
