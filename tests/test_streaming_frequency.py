"""StreamingFrequency (Yi et al. 2019, Algorithms 2-3): accuracy on synthetic streams with a known
distribution, drift, collisions and several hashes, exactness against a per-item reference, state
handling (training=False, checkpoints, Keras fit) and MirroredStrategy on two logical CPUs."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfrec_towers.tasks.streaming_frequency import StreamingFrequency

BATCH = 64


def zipf(n, s=1.0):
    q = 1.0 / np.arange(1, n + 1) ** s
    return q / q.sum()


def item_ids(n):
    return tf.constant([f"item_{i}" for i in range(n)])


def per_batch_probability(q, batch=BATCH):
    """The estimator's target: B is the mean gap between steps at which an item occurs at least once
    (duplicates in a batch update once), so 1 / B -> P(item in a batch of `batch` i.i.d. draws) =
    1 - (1 - q)^batch. This is ~= batch * q only for rare items; the top items here have batch * q up to
    9 while their probability of being in a batch is <= 1, so batch * q would be the wrong target."""
    return 1.0 - (1.0 - q) ** batch


def driver(layer, num_items, batch=BATCH):
    """A tf.function running `steps` training steps of i.i.d. batches drawn from probabilities q (one
    trace, a graph loop: fast)."""
    ids = item_ids(num_items)

    @tf.function
    def run(q, steps, seed):
        logits = tf.math.log(q)[None, :]
        for i in tf.range(steps):
            draws = tf.random.stateless_categorical(logits, batch, seed=tf.stack([seed, tf.cast(i, tf.int64)]))
            layer(tf.gather(ids, draws[0]), training=True)

    return lambda q, steps, seed: run(tf.constant(q, tf.float32), tf.constant(steps), tf.constant(seed, tf.int64))


def estimates(layer, num_items):
    return layer(item_ids(num_items)).numpy()


def test_tracks_a_known_distribution_and_its_drift():
    n = 500
    layer = StreamingFrequency(hash_size=2**16, num_hashes=2)  # the paper's alpha = 0.01
    run = driver(layer, n)
    q = zipf(n)
    run(q, 3000, seed=1)
    top = np.argsort(-q)[:50]
    p = per_batch_probability(q)
    relative = np.abs(estimates(layer, n)[top] / p[top] - 1)
    # Top 50: present in 17%-100% of batches, so each has >= ~500 occurrences in 3000 steps (5 x the
    # 1/alpha memory); the moving average's noise is ~7% x sqrt(1 - p).
    assert relative.max() < 0.25, relative
    assert np.median(relative) < 0.08, relative

    # The distribution changes: each item takes another item's probability.
    q2 = q[np.random.default_rng(0).permutation(n)]
    p2 = per_batch_probability(q2)
    top2 = np.argsort(-q2)[:50]
    stale = np.abs(np.log(estimates(layer, n)[top2] / p2[top2]))
    assert np.median(stale) > 1.0, stale  # right after the switch the estimates are clearly wrong
    run(q2, 3000, seed=2)
    relative = np.abs(estimates(layer, n)[top2] / p2[top2] - 1)
    assert relative.max() < 0.25, relative
    assert np.median(relative) < 0.08, relative


def rare_error(num_hashes, hash_size, n=1000):
    """Median |log(p_est / p)| over the rarer half of 1000 Zipf(0.7) items after 3000 steps (alpha 0.05,
    so that rare items, present in 2-3% of batches, have ~20 x 1/alpha steps of history)."""
    layer = StreamingFrequency(hash_size=hash_size, num_hashes=num_hashes, learning_rate=0.05)
    q = zipf(n, 0.7)
    driver(layer, n)(q, 3000, seed=3)
    rare = np.argsort(-q)[n // 2:]
    return np.median(np.abs(np.log(estimates(layer, n)[rare] / per_batch_probability(q)[rare])))


def test_more_hashes_help_under_collisions():
    # 1000 items in 512 slots: with one hash nearly every rare item shares its slot with another
    # item, whose occurrences shorten the slot's gaps (p overestimated, typically several-fold). With
    # four arrays the max gap is taken from the least-collided slot.
    one, four = rare_error(1, 512), rare_error(4, 512)
    no_collisions = rare_error(1, 2**16)
    assert one > 0.8, (one, four)  # collisions really bite
    assert four < 0.6 * one, (one, four)
    assert no_collisions < four, (no_collisions, four)  # what remains is mostly collisions, not noise


class Reference:
    """Algorithms 2-3 item by item in plain Python, on the layer's own hash slots."""

    def __init__(self, num_hashes, hash_size, alpha, start):
        self.alpha, self.start = alpha, start
        self.A = np.zeros([num_hashes, hash_size], np.int64)
        self.B = np.full([num_hashes, hash_size], 1.0 if start == "paper" else 0.0)
        self.t = 0

    def estimate(self, slots):
        return np.array([1.0 / max(max(self.B[k, h] for k, h in enumerate(row)), 1.0) for row in slots])

    def train(self, slots):
        p = self.estimate(slots)
        self.t += 1
        hit = {(k, h) for row in slots for k, h in enumerate(row)}  # a slot updates once per step
        for k, h in hit:
            gap = self.t - self.A[k, h]
            if self.start == "first_gap" and self.A[k, h] == 0:
                pass  # first occurrence: no gap yet
            elif self.start == "first_gap" and self.B[k, h] == 0:
                self.B[k, h] = gap
            else:
                self.B[k, h] = (1 - self.alpha) * self.B[k, h] + self.alpha * gap
            self.A[k, h] = self.t
        return p


@pytest.mark.parametrize("start", ["first_gap", "paper"])
def test_matches_a_per_item_reference(start):
    # 8 slots, 3 hashes, 12 items: collisions within and across batches; duplicates in batches.
    layer = StreamingFrequency(hash_size=8, num_hashes=3, learning_rate=0.1, start=start)
    reference = Reference(3, 8, 0.1, start)
    rng = np.random.default_rng(4)
    step = tf.function(lambda ids: layer(ids, training=True))
    for i in range(40):
        ids = tf.constant([f"u{j}" for j in rng.integers(0, 12, rng.integers(1, 7))])
        expected = reference.train(layer.hash_slots(ids).numpy())
        got = step(ids) if i % 2 else layer(ids, training=True)  # tf.function and eager steps alternate
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert layer.step.numpy() == reference.t == 40
    np.testing.assert_array_equal(layer.last_step.numpy(), reference.A)
    np.testing.assert_allclose(layer.gap.numpy(), reference.B, rtol=1e-5)


def test_slots_are_deterministic_independent_and_in_range():
    layer = StreamingFrequency(hash_size=1000, num_hashes=3)
    ids = tf.constant([f"x{i}" for i in range(2000)])
    slots = layer.hash_slots(ids).numpy()
    assert slots.shape == (2000, 3) and slots.min() >= 0 and slots.max() < 1000
    np.testing.assert_array_equal(slots, StreamingFrequency(hash_size=1000, num_hashes=3).hash_slots(ids).numpy())
    for a in range(3):  # different keys: columns agree only by chance (~1/1000)
        for b in range(a + 1, 3):
            assert np.mean(slots[:, a] == slots[:, b]) < 0.01
    np.testing.assert_array_equal(layer.hash_slots(tf.constant([7, 8], tf.int64)).numpy(),
                                  layer.hash_slots(tf.constant(["7", "8"])).numpy())


def state(layer):
    return [v.numpy().copy() for v in (layer.last_step, layer.gap, layer.step)]


def test_inference_never_changes_state_and_unseen_ids_are_finite():
    layer = StreamingFrequency(hash_size=2**16, num_hashes=2)
    unseen = layer(tf.constant(["never", "seen"]))
    np.testing.assert_array_equal(unseen.numpy(), [1.0, 1.0])  # B untouched: p = 1 (no logQ boost)
    batches = [["a", "b", "a"], ["a", "c"], ["b"], ["a", "b", "d"]]
    for ids in batches:
        layer(tf.constant(ids), training=True)
    before = state(layer)
    ids = tf.constant(["a", "b", "c", "d", "never"])
    p = layer(ids).numpy()
    for call in (lambda: layer(ids), lambda: layer(ids, training=False), lambda: layer(ids, training=None),
                 lambda: tf.function(lambda x: layer(x, training=False))(ids),
                 lambda: layer(ids, training=tf.constant(False))):
        np.testing.assert_array_equal(call().numpy(), p)
    for got, want in zip(state(layer), before):
        np.testing.assert_array_equal(got, want)
    assert np.all(np.isfinite(p)) and np.all((p > 0) & (p <= 1))
    assert p[-1] == 1.0  # still never seen
    assert p[0] < 1.0    # "a": three occurrences, gaps 1 and 2
    # training=True returns the estimate read before its own update
    np.testing.assert_array_equal(layer(ids, training=True).numpy(), p)
    assert layer.step.numpy() == len(batches) + 1
    assert layer.compute_dtype == "float32" and layer(ids).dtype == tf.float32


def test_state_is_checkpointed(tmp_path):
    layer = StreamingFrequency(hash_size=128, num_hashes=2)
    run = driver(layer, 50)
    run(zipf(50), 200, seed=5)
    ids = item_ids(60)  # 10 never seen
    path = tf.train.Checkpoint(frequency=layer).save(str(tmp_path / "ckpt"))
    restored = StreamingFrequency(hash_size=128, num_hashes=2)
    np.testing.assert_array_equal(restored(ids).numpy(), np.ones(60))
    tf.train.Checkpoint(frequency=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(restored(ids).numpy(), layer(ids).numpy())
    for got, want in zip(state(restored), state(layer)):
        np.testing.assert_array_equal(got, want)
    # continuing from the restored state is continuing the stream (t included)
    run(zipf(50), 20, seed=6)
    driver(restored, 50)(zipf(50), 20, seed=6)
    np.testing.assert_array_equal(restored(ids).numpy(), layer(ids).numpy())

    # Keras weights of a model holding the layer
    def model(frequency):
        inputs = keras.Input(shape=(), dtype=tf.string)
        return keras.Model(inputs, frequency(inputs))

    model(layer).save_weights(str(tmp_path / "weights"))
    fresh = StreamingFrequency(hash_size=128, num_hashes=2)
    model(fresh).load_weights(str(tmp_path / "weights"))
    np.testing.assert_array_equal(fresh(ids).numpy(), layer(ids).numpy())
    assert fresh.step.numpy() == 220 and not fresh.trainable_weights and len(fresh.non_trainable_weights) == 3


class FrequencyModel(keras.Model):
    """A train_step that advances the estimator, as a retrieval model's would."""

    def __init__(self, **kwargs):
        super().__init__()
        self.frequency = StreamingFrequency(**kwargs)

    def train_step(self, ids):
        p = self.frequency(ids, training=True)
        return {"mean_p": tf.reduce_mean(p)}


def test_keras_fit_advances_once_per_step():
    model = FrequencyModel(hash_size=32, num_hashes=2, learning_rate=0.1)
    model.compile()
    batches = [[f"i{(3 * s + j) % 7}" for j in range(5)] for s in range(9)]
    model.fit(tf.data.Dataset.from_tensor_slices(batches), epochs=2, verbose=0)
    reference = StreamingFrequency(hash_size=32, num_hashes=2, learning_rate=0.1)
    for ids in batches * 2:
        reference(tf.constant(ids), training=True)
    for got, want in zip(state(model.frequency), state(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert model.frequency.step.numpy() == 18


MIRRORED = textwrap.dedent("""
    import tfrec_towers, json
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    cpu = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfrec_towers.tasks.streaming_frequency import StreamingFrequency

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    kwargs = dict(hash_size=16, num_hashes=2, learning_rate=0.1)  # collisions included
    with strategy.scope():
        mirrored = StreamingFrequency(**kwargs)
    single = StreamingFrequency(**kwargs)

    @tf.function
    def step(shards):
        return strategy.run(lambda ids: mirrored(ids, training=True), args=(shards,))

    rng = np.random.default_rng(7)
    out = {"kinds": [type(v).__name__ for v in (mirrored.last_step, mirrored.gap, mirrored.step)],
           "estimates_equal": True}
    for i in range(30):
        size = int(rng.integers(1, 9))  # odd sizes: uneven shards; 1: one replica gets nothing
        batch = [f"u{j}" for j in rng.integers(0, 20, size)]
        half = (size + 1) // 2
        shards = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(batch[:half] if ctx.replica_id_in_sync_group == 0 else batch[half:],
                                    tf.string))
        got = np.concatenate([x.numpy() for x in strategy.experimental_local_results(step(shards))])
        want = single(tf.constant(batch), training=True).numpy()
        out["estimates_equal"] &= bool(np.array_equal(got, want))

    def copies(v):
        return [x.numpy() for x in v.values]

    out["copies_equal"] = all(np.array_equal(*copies(v)) for v in (mirrored.last_step, mirrored.gap, mirrored.step))
    out["state_equal"] = all(np.allclose(copies(m)[0], s.numpy(), rtol=1e-6, atol=0)
                             for m, s in ((mirrored.last_step, single.last_step), (mirrored.gap, single.gap),
                                          (mirrored.step, single.step)))
    out["step"] = int(mirrored.step.numpy())
    ids = tf.constant([f"u{j}" for j in range(25)])
    with strategy.scope():
        out["read_equal"] = bool(np.array_equal(mirrored(ids).numpy(), single(ids).numpy()))

    # Keras fit under the strategy: 8 global batches of 6 (3 per replica), 2 epochs
    class FrequencyModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.frequency = StreamingFrequency(**kwargs)

        def train_step(self, ids):
            return {"mean_p": tf.reduce_mean(self.frequency(ids, training=True))}

    with strategy.scope():
        model = FrequencyModel()
        model.compile()
    batches = [[f"v{j}" for j in rng.integers(0, 12, 6)] for _ in range(8)]
    data = tf.data.Dataset.from_tensor_slices(sum(batches, [])).batch(6)
    model.fit(data, epochs=2, verbose=0)
    fit_single = StreamingFrequency(**kwargs)
    for batch in batches * 2:
        fit_single(tf.constant(batch), training=True)
    f = model.frequency
    out["fit_step"] = [int(x.numpy()) for x in f.step.values]
    out["fit_state_equal"] = all(np.allclose(x.numpy(), s.numpy(), rtol=1e-6, atol=0)
                                 for m, s in ((f.last_step, fit_single.last_step), (f.gap, fit_single.gap))
                                 for x in m.values)
    print("RESULT " + json.dumps(out))
""")


def test_mirrored_strategy_matches_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-5000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["kinds"] == ["MirroredVariable"] * 3
    assert out["estimates_equal"], out   # each replica's p = the single-device p of its rows
    assert out["copies_equal"], out      # the two mirrored copies never diverge
    assert out["state_equal"], out       # A, B, t as if the whole batches were fed to one device
    assert out["step"] == 30 and out["read_equal"], out
    assert out["fit_step"] == [16, 16] and out["fit_state_equal"], out
