"""The training-step speed-ups of issue 16 compute exactly what the code they replace computed."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfrec_towers.features.encoders import LookupEmbedding, SequenceEncoder
from tfrec_towers.tasks.chain import RemoveAccidentalHits, RetrievalContext, equal_ids


def test_equal_ids_is_the_string_comparison():
    rng = np.random.default_rng(0)
    rows = tf.constant([str(v) for v in rng.integers(0, 20, 64)])
    columns = tf.constant([str(v) for v in rng.integers(0, 20, 96)])
    want = tf.equal(rows[:, None], columns[None, :])
    assert np.array_equal(equal_ids(rows, columns).numpy(), want.numpy())
    ints = tf.constant(rng.integers(0, 5, 10))
    assert np.array_equal(equal_ids(ints, ints).numpy(), tf.equal(ints[:, None], ints[None, :]).numpy())


def test_accidental_hits_with_sampled_columns():
    ids = tf.constant(["a", "b", "a", "c", "b", "a"])  # 3 rows, 3 sampled columns
    logits = tf.zeros([3, 6])
    out, _ = RemoveAccidentalHits()(logits, tf.eye(3, 6), context=RetrievalContext(tf.zeros([3, 2]), tf.zeros([6, 2]), ids))
    masked = out.numpy() < -1e30
    want = (tf.equal(ids[:3, None], ids[None, :]).numpy() & ~np.eye(3, 6, dtype=bool))
    assert np.array_equal(masked, want)


def test_sequence_encoder_skips_the_cut_only_when_every_row_fits():
    keras.utils.set_random_seed(0)
    table = LookupEmbedding(vocabulary=["x", "y", "z", "w"], dim=4)
    history = tf.constant([["x", "y", "z", "w"], ["y", "", "z", ""], ["", "", "", ""]])
    for max_len in (2, 4, 8):
        encoder = SequenceEncoder(table, max_len, "mean")
        cut = encoder.last_items(history)
        want = SequenceEncoder(table, 100, "mean")(cut)  # the old path: always cut, then pool
        assert np.allclose(encoder(history).numpy(), want.numpy())
        assert np.allclose(tf.function(encoder)(history).numpy(), want.numpy())
