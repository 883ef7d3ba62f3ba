"""SimpleX's gated user tower: u = g e_id + (1 - g) W pool(history), against NumPy; dropout only in
training; the width checks; embedding L2 on looked-up rows only."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfrec_towers.config import UserGateConfig
from tfrec_towers.features import spec as S
from tfrec_towers.features.stats import FeatureStats
from tfrec_towers.towers import build_towers
from tfrec_towers.towers.user_gate import UserGate

STATS = FeatureStats(num_examples=4, vocab_counts={"user_id": {"u1": 2, "u2": 1},
                                                   "item_id": {"i1": 3, "i2": 2, "i3": 1}})
BATCH = {"user_id": tf.constant(["u1", "u2", "zz"]), "hist": tf.constant([["i1", "i2"], ["i3", ""], ["", ""]]),
         "item_id": tf.constant(["i2", "i1", "i3"])}


def spec(user_dim=4):
    return S.FeatureSpec(query=[S.SequenceFeature("hist", vocab_from="item_id", embedding_dim=4, max_len=3),
                                S.IdFeature("user_id", embedding_dim=user_dim)],
                         candidate=[S.IdFeature("item_id", embedding_dim=4)])


@pytest.mark.parametrize("learned", [False, True])
def test_gate_matches_numpy(learned):
    keras.utils.set_random_seed(0)
    gate = UserGate((3, 5), weight=0.8, learned=learned, dropout=0.5)
    x = np.random.default_rng(0).normal(size=(4, 7)).astype(np.float32)
    out = gate(tf.constant(x), training=False).numpy()
    w = gate.history.kernel.numpy()
    rest = np.concatenate([x[:, :3], x[:, 5:]], axis=1)
    np.testing.assert_allclose(out, 0.8 * x[:, 3:5] + 0.2 * rest @ w, rtol=1e-5, atol=1e-6)
    assert len(gate.trainable_weights) == (2 if learned else 1)
    trained = gate(tf.constant(x), training=True).numpy()
    assert (trained == 0).any() and not np.allclose(trained, out)  # dropout on the user vector


def test_tower_uses_the_id_columns_wherever_the_id_is():
    keras.utils.set_random_seed(0)
    query, candidate = build_towers(spec(), STATS, hidden=[], output_dim=0, user_gate=UserGateConfig(dropout=0.0))
    q = query(BATCH).numpy()
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    x = query.encode(BATCH).numpy()                     # [hist (4) | user_id (4)]
    gate = query.projection
    assert (gate.start, gate.stop) == (4, 8)
    raw = 0.8 * x[:, 4:] + 0.2 * x[:, :4] @ gate.history.kernel.numpy()
    np.testing.assert_allclose(q, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)
    assert candidate(BATCH).shape == (3, 4)


def test_width_and_sharing_errors():
    with pytest.raises(ValueError, match="user vector has the width of 'user_id''s embedding \\(8\\)"):
        build_towers(spec(user_dim=8), STATS, hidden=[], output_dim=0, user_gate=UserGateConfig())
    with pytest.raises(ValueError, match="must name a query feature"):
        build_towers(spec(), STATS, hidden=[], output_dim=0, user_gate=UserGateConfig(id="nope"))
    with pytest.raises(ValueError, match="sharing 'none'"):
        build_towers(spec(), STATS, hidden=[], output_dim=0, sharing="projection", user_gate=UserGateConfig())


def test_embedding_l2_is_on_the_batch_rows_only():
    keras.utils.set_random_seed(0)
    query, candidate = build_towers(spec(), STATS, hidden=[], output_dim=0, embedding_l2=0.01)
    with tf.GradientTape() as tape:
        candidate(BATCH)
        loss = tf.add_n(candidate.losses)
    table = candidate.encoders[0].table.embedding.embeddings
    rows = candidate.encoders[0].table.lookup(BATCH["item_id"]).numpy()
    expected = 0.01 * np.sum(table.numpy()[rows] ** 2) / 3   # Keras divides an activity loss by the batch
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    gradient = tape.gradient(loss, table)
    assert isinstance(gradient, tf.IndexedSlices)


@pytest.mark.parametrize("history_gradient", [True, False])
def test_history_gradient_switch(history_gradient):
    """history_gradient False: the shared item table gets no gradient through the user vector (its rows
    with a gradient are the candidates' only); W, the gate's projection, still learns."""
    keras.utils.set_random_seed(0)
    query, candidate = build_towers(spec(), STATS, hidden=[], output_dim=0,
                                    user_gate=UserGateConfig(dropout=0.0, history_gradient=history_gradient))
    table = candidate.encoders[0].table.embedding.embeddings
    assert query.encoders[0].table.embedding.embeddings is table          # the history reads the item table
    with tf.GradientTape(persistent=True) as tape:
        q = query(BATCH)
        query_only = tf.reduce_sum(q * tf.constant([[1.0, 2.0, 3.0, 4.0]]))
        loss = tf.reduce_sum(q * candidate(BATCH))
    through_query = tape.gradient(query_only, table)
    assert (through_query is not None) == history_gradient
    lookup = candidate.encoders[0].table.lookup
    history_rows = set(lookup(tf.constant(["i1", "i2", "i3"])).numpy())
    if history_gradient:
        assert set(through_query.indices.numpy()) == history_rows
    expected = set(lookup(BATCH["item_id"]).numpy()) | (history_rows if history_gradient else set())
    assert set(tape.gradient(loss, table).indices.numpy()) == expected
    assert np.abs(tape.gradient(loss, query.projection.history.kernel).numpy()).sum() > 0


def test_history_gradient_needs_a_shared_table():
    own = S.FeatureSpec(query=[S.SequenceFeature("hist", vocab_from="item_id", embedding_dim=4, max_len=3,
                                                 share_embedding=False),
                               S.IdFeature("user_id", embedding_dim=4)],
                        candidate=[S.IdFeature("item_id", embedding_dim=4)])
    with pytest.raises(ValueError, match="history_gradient false .* must share a candidate feature's embedding.*hist"):
        build_towers(own, STATS, hidden=[], output_dim=0, user_gate=UserGateConfig(history_gradient=False))
