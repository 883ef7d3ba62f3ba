"""``train.steps_per_execution``: fit runs several steps per call where it knows an epoch's length, and
every epoch still trains on every batch (epochs whose length is not a multiple of N included)."""
import math

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import pytest
import tensorflow as tf

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.inputs import compute_stats, make_input, training_batches
from tfrec_towers.data.synthetic import generate_synthetic
from tfrec_towers.train import build_trainable, steps_per_execution

BATCH = 16
N = 7  # steps per call: prime, so that no epoch here is a multiple of it


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Synthetic logs with label-0 exposures: the softmax losses filter them, the pointwise ones keep them."""
    out = tmp_path_factory.mktemp("steps_per_execution") / "logs"
    return generate_synthetic(str(out), num_users=60, num_items=40, num_requests=700, exposures_per_request=2,
                              seed=3, progress=None)["files"]


def _config(*overrides):
    return Config.load(packaged("default")).with_overrides(
        [f"train.batch_size={BATCH}", f"train.steps_per_execution={N}", *overrides])


@pytest.mark.parametrize("overrides", [[], ["data.in_memory=true"], ["task.loss=bce", "task.logq=false"]],
                         ids=["files_positives", "in_memory", "pointwise_every_event"])
def test_every_batch_of_every_epoch_trains(logs, overrides):
    config = _config(*overrides)
    files = tf.io.gfile.glob(logs["train"])
    stats, _ = compute_stats(config, files, progress=lambda m: None)
    assert stats.num_filtered > 0  # exposures: the positives-only pipeline filters some records
    examples = stats.num_examples + (stats.num_filtered if "task.loss=bce" in overrides else 0)
    batches = math.ceil(examples / BATCH)
    assert batches % N and batches > N  # an epoch ends inside an execution
    assert training_batches(config, stats) == batches
    dataset = make_input(config, files, training=True, stats=stats)
    assert int(dataset.cardinality()) == batches
    assert sum(int(b["label"].shape[0]) for b in dataset) == examples  # the asserted length is the real one
    model = build_trainable(config, stats, files, logs["items"], progress=lambda m: None)
    assert int(model._steps_per_execution.numpy()) == N
    model.fit(dataset, epochs=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2 * batches


def test_one_step_per_call_where_the_length_is_not_known(logs):
    files = tf.io.gfile.glob(logs["train"])
    config = _config("data.corrupt_records=skip")  # skipped records would make the count a guess
    stats, _ = compute_stats(config, files, progress=lambda m: None)
    assert training_batches(config, stats) is None
    assert int(make_input(config, files, training=True, stats=stats).cardinality()) < 0
    assert steps_per_execution(config, stats, tf.distribute.get_strategy()) == 1
    assert steps_per_execution(_config(), None, tf.distribute.get_strategy()) == 1  # no stats
    # several workers: each reads a shard of the files, so the whole files' count is not asserted on its pipeline
    assert training_batches(_config("train.strategy=multi_worker"), compute_stats(_config(), files)[0]) is None
    config = _config("data.in_memory=true", "data.corrupt_records=skip")  # in memory: counted as it is read
    assert steps_per_execution(config, stats, tf.distribute.get_strategy()) == N


def test_a_wrong_length_is_an_error_naming_both(logs):
    files = tf.io.gfile.glob(logs["train"])
    config = _config()
    stats, _ = compute_stats(config, files, progress=lambda m: None)
    stats.num_examples += 5 * BATCH  # stats of other files
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain"):
        for _ in make_input(config, files, training=True, stats=stats):
            pass
