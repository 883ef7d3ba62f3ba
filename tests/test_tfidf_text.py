"""The tfidf text combiner (trigram IDF from the stats pass, shared random-projection start) and
identifier-only item IDs: what text search (benchmarks/scifact.py) is built on."""
import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.config import Config
from tfrec_towers.features import spec as S
from tfrec_towers.features.dssm_word_hashing import word_hash
from tfrec_towers.features.stats import FeatureStats, StatsAccumulator
from tfrec_towers.model import build_model
from tfrec_towers.towers import Tower, build_towers

BUCKETS = 4096
QUERIES = ["aspirin lowers stroke risk", "vitamin d deficiency in winter", "sleep loss impairs memory",
           "stroke and aspirin", "memory of sleep", "winter sunlight vitamin"]
DOCS = ["Aspirin lowers the risk of stroke in adults", "Vitamin D deficiency is common in winter months",
        "Sleep loss impairs memory consolidation", "Aspirin thins the blood and prevents stroke",
        "Naps restore memory after sleep loss", "Sunlight makes vitamin D in the skin"]


def spec(dim=32, item_dim=0, combiner="tfidf"):
    return S.FeatureSpec(
        query=[S.TextFeature("query_text", num_buckets=BUCKETS, embedding_dim=dim, combiner=combiner)],
        candidate=[S.IdFeature("item_id", embedding_dim=item_dim),
                   S.TextFeature("document", num_buckets=BUCKETS, embedding_dim=dim, combiner=combiner)])


def stats_of(feature_spec):
    acc = StatsAccumulator(feature_spec)
    acc({"query_text": tf.constant(QUERIES), "document": tf.constant(DOCS),
         "item_id": tf.constant([f"d{i}" for i in range(len(DOCS))])})
    return acc.result()


def hashed_tfidf(texts, idf):
    """NumPy reference: rows (1 + ln tf) * idf over the hashed trigram buckets."""
    ids = word_hash(tf.constant(texts), BUCKETS)
    out = np.zeros((len(texts), BUCKETS))
    for row, buckets in enumerate(ids.to_list()):
        values, counts = np.unique(buckets, return_counts=True)
        out[row, values] = (1 + np.log(counts)) * idf[values]
    return out


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_idf_counts_each_text_of_both_sides_once(tmp_path):
    stats = stats_of(spec())
    texts = QUERIES + DOCS
    df = np.zeros(BUCKETS)
    for buckets in word_hash(tf.constant(texts), BUCKETS).to_list():
        df[np.unique(buckets)] += 1
    expected = np.log((1 + len(texts)) / (1 + df)) + 1
    np.testing.assert_allclose(stats.idf(BUCKETS), expected, rtol=1e-6)
    assert stats.text_df[str(BUCKETS)]["texts"] == 12
    stats.save(str(tmp_path / "feature_stats.json"))  # the run directory's JSON round trip
    reloaded = FeatureStats.load(str(tmp_path / "feature_stats.json"))
    np.testing.assert_allclose(reloaded.idf(BUCKETS), expected, rtol=1e-6)
    with pytest.raises(KeyError, match="num_buckets 99"):
        stats.idf(99)


def test_tfidf_encoder_is_the_weighted_sum_of_trigram_embeddings():
    feature_spec = spec()
    stats = stats_of(feature_spec)
    query_tower, _ = build_towers(feature_spec, stats, hidden=(), output_dim=0, normalize=False, sharing="none")
    out = query_tower({"query_text": tf.constant(QUERIES)}).numpy()
    table = query_tower.encoders[0].embedding.embeddings.numpy()
    np.testing.assert_allclose(out, hashed_tfidf(QUERIES, stats.idf(BUCKETS)) @ table, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sharing", ["none", "full"])
def test_towers_start_at_the_tfidf_cosine_and_separate_towers_share_the_start(sharing):
    """Johnson-Lindenstrauss: at 4096 dims the projected cosine is within ~0.02 (1 sd) of the exact one."""
    feature_spec = spec(dim=4096)
    stats = stats_of(feature_spec)
    tf.keras.utils.set_random_seed(0)
    q_tower, d_tower = build_towers(feature_spec, stats, hidden=(), output_dim=0, sharing=sharing)
    q = q_tower({"query_text": tf.constant(QUERIES)}).numpy()
    d = d_tower({"document": tf.constant(DOCS), "item_id": tf.constant(["x"] * len(DOCS))}).numpy()
    assert d_tower.input_names_ == ["document"]  # the identifier-only item ID is no tower input
    idf = stats.idf(BUCKETS)
    exact = unit(hashed_tfidf(QUERIES, idf)) @ unit(hashed_tfidf(DOCS, idf)).T
    assert np.abs(q @ d.T - exact).max() < 0.1
    assert (np.argmax(q @ d.T, axis=1) == np.argmax(exact, axis=1)).all()
    if sharing == "none":
        np.testing.assert_array_equal(q_tower.encoders[0].embedding.embeddings.numpy(),
                                      d_tower.encoders[0].embedding.embeddings.numpy())
        assert q_tower.encoders[0] is not d_tower.encoders[0]


def test_the_projection_seed_follows_the_training_seed():
    feature_spec, tables = spec(), []
    stats = stats_of(feature_spec)
    for seed in (0, 0, 1):
        tf.keras.utils.set_random_seed(seed)
        tower, _ = build_towers(feature_spec, stats, hidden=(), output_dim=0, sharing="full")
        tower({"query_text": tf.constant(QUERIES[:1])})
        tables.append(tower.encoders[0].embedding.embeddings.numpy())
    np.testing.assert_array_equal(tables[0], tables[1])
    assert not np.array_equal(tables[0], tables[2])


def test_identifier_only_ids_and_their_limits():
    with pytest.raises(ValueError, match="embedding_dim >= 1"):
        S.CategoricalFeature("genre", embedding_dim=0)
    with pytest.raises(ValueError, match="candidate tower has no input"):
        build_towers(S.FeatureSpec(query=[S.IdFeature("user_id", hash_buckets=10)],
                                   candidate=[S.IdFeature("item_id", embedding_dim=0)]), None, sharing="none")
    with pytest.raises(ValueError, match="combiner must be one of"):
        S.TextFeature("t", combiner="max")
    with pytest.raises(ValueError, match="trigram IDF"):
        from tfrec_towers.features.encoders import TextEncoder
        TextEncoder(BUCKETS, 8, "tfidf")


@pytest.mark.parametrize("sharing, hidden, output_dim", [("full", [], 0), ("projection", [], 32), ("none", [], 0)])
def test_generative_interaction_names_the_tower_shapes_it_cannot_join(sharing, hidden, output_dim):
    config = Config.from_dict({"features": spec().to_dict(),
                               "model": {"sharing": sharing, "hidden": hidden, "output_dim": output_dim,
                                         "generative": {"targets": ["query_text"]}}})
    with pytest.raises(ValueError, match="model.generative adds the pseudo query vector"):
        build_model(config, stats_of(config.features))


@pytest.mark.parametrize("sharing, output_dim", [("full", 0), ("none", 0), ("projection", 32)])
def test_additive_generative_interaction_keeps_every_shapes_start_and_trains_the_generator(sharing, output_dim):
    """combine 'add': x_v + G(x_v) with G's last layer at zero, so the untrained towers are those without
    G; the reconstruction loss reaches G, and the query tower is not touched by it (stop-gradient)."""
    from tfrec_towers.towers.generative_interaction import ReconstructionLoss
    from tfrec_towers.tasks import RetrievalContext

    def model(generative):
        config = Config.from_dict({"features": spec().to_dict(),
                                   "model": dict({"sharing": sharing, "hidden": [], "output_dim": output_dim},
                                                 **generative)})
        tf.keras.utils.set_random_seed(0)
        return build_model(config, stats_of(config.features))

    features = {"query_text": tf.constant(QUERIES), "document": tf.constant(DOCS),
                "item_id": tf.constant([f"d{i}" for i in range(len(DOCS))])}
    with_g = model({"generative": {"targets": ["query_text"], "hidden": [16], "combine": "add"}})
    start = with_g.candidate_tower(features).numpy()
    tower = with_g.candidate_tower  # the same layers in a tower without G (the built one is left as it is)
    without_g = Tower(list(zip(tower.feature_names, tower.encoders)), tower.hidden, tower.projection, tower.normalize)
    plain = without_g(features).numpy()
    np.testing.assert_allclose(start, plain, rtol=1e-5, atol=1e-6)
    if not output_dim:  # no fresh layer: exactly the lexical start of the model without G
        np.testing.assert_allclose(start, model({}).candidate_tower(features).numpy(), rtol=1e-5, atol=1e-6)
    rec = next(a for a in with_g.task.auxiliary_losses if isinstance(a, ReconstructionLoss))
    with tf.GradientTape() as tape:
        value = rec(RetrievalContext(with_g.query_tower(features), with_g.candidate_tower(features),
                                     features=features, labels=tf.ones([len(DOCS)])))
    generator = rec.refs.generator
    grads = tape.gradient(value, generator.trainable_weights + with_g.query_tower.trainable_weights)
    assert float(value) > 0 and all(g is not None for g in grads[:len(generator.trainable_weights)])
    if sharing != "full":  # SDE's query and document towers are one set of weights
        assert all(g is None for g in grads[len(generator.trainable_weights):])
    moved = generator.mlp.layers[-1]
    query = with_g.query_tower(features).numpy()
    moved.kernel.assign(tf.ones_like(moved.kernel))
    assert not np.allclose(with_g.candidate_tower(features).numpy(), start)
    np.testing.assert_allclose(with_g.query_tower(features).numpy(), query, rtol=1e-6)


def test_additive_generative_interaction_needs_one_width():
    config = Config.from_dict({"features": spec(dim=32).to_dict(),
                               "model": {"sharing": "none", "hidden": [], "output_dim": 0,
                                         "generative": {"targets": ["query_text"], "combine": "add"}}})
    config.features.candidate[1].embedding_dim = 16
    with pytest.raises(ValueError, match=r"combine 'add' adds the pseudo query vector \(32-d.*\(16-d\)"):
        build_model(config, stats_of(config.features))
    with pytest.raises(ValueError, match="must be one of"):
        Config.from_dict({"features": spec().to_dict(), "model": {"generative": {"combine": "sum"}}})


def test_idf_from_items_counts_each_catalog_document_once(tmp_path):
    """data.idf_from: items: the IDF of the catalog's documents (a repeated item counts once), not of
    the logs' texts; without items files the option fails naming them."""
    from tfrec_towers.data.inputs import compute_stats
    from tfrec_towers.data.writer import serialize

    config = Config.from_dict({"features": spec().to_dict(), "data": {"idf_from": "items"}})
    logs, items = str(tmp_path / "train.tfrecord"), str(tmp_path / "items.tfrecord")
    with tf.io.TFRecordWriter(logs) as w:
        for q, d in zip(QUERIES[:2], DOCS[:2]):
            w.write(serialize({"query_text": q, "document": d, "item_id": d[:5]}))
    with tf.io.TFRecordWriter(items) as w:
        for i, d in enumerate(DOCS + DOCS[:2]):  # the last two repeat items d0 and d1
            w.write(serialize({"item_id": f"d{i % len(DOCS)}", "document": d}))
    stats, _ = compute_stats(config, [logs], lambda m: None, items)
    df = np.zeros(BUCKETS)
    for buckets in word_hash(tf.constant(DOCS), BUCKETS).to_list():
        df[np.unique(buckets)] += 1
    np.testing.assert_allclose(stats.idf(BUCKETS), np.log((1 + len(DOCS)) / (1 + df)) + 1, rtol=1e-6)
    assert stats.num_examples == 2
    with pytest.raises(ValueError, match=r"idf_from: items .* no items files"):
        compute_stats(config, [logs], lambda m: None)
