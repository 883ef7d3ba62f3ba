"""train --valid: per-epoch validation with the package's per-user evaluation, learning-rate decay on a
plateau, early stopping, and the best epoch's weights as the run's final weights."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.synthetic import generate_synthetic
from tfrec_towers.train import train


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    return generate_synthetic(str(root / "logs"), num_users=120, num_items=60, num_requests=1500, seed=3,
                              progress=None)["files"]


def config(*overrides):
    return Config.load(packaged("default")).with_overrides(
        ["train.batch_size=256", "model.hidden=[]", "model.output_dim=16", *overrides])


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_plateau_decays_the_learning_rate_then_stops(files, tmp_path):
    c = config("train.epochs=8", "train.learning_rate=1.0e-9",
               "train.validation={patience: 2, decay: 0.5, decay_patience: 1, min_delta: 0.5}")
    run = str(tmp_path / "run")
    train(c, files["train"], run, None, files["items"], verbose=0, progress=lambda m: None, valid_pattern=files["test"])
    epochs = lines(os.path.join(run, "epochs.jsonl"))
    assert [e["epoch"] for e in epochs] == [0, 1, 2]          # best at 1, no new best at 2 and 3: stop
    assert all("valid_recall@20" in e and e["valid_seconds"] >= 0 for e in epochs)
    with open(os.path.join(run, "validation.json"), encoding="utf-8") as f:
        state = json.load(f)
    assert state["best_epoch"] == 0 and state["waiting"] == 2
    assert state["learning_rate"] == pytest.approx(1e-9 * 0.25, rel=1e-4)
    assert [p["epoch"] for p in state["curve"]] == [0, 1, 2]


def test_final_weights_are_the_best_epochs(files, tmp_path):
    c = config("train.epochs=3", "train.learning_rate=0.05", "train.validation={patience: 0, decay: 1.0}")
    run = str(tmp_path / "run")
    train(c, files["train"], run, None, files["items"], verbose=0, progress=lambda m: None, valid_pattern=files["test"])
    with open(os.path.join(run, "validation.json"), encoding="utf-8") as f:
        state = json.load(f)
    values = [p["recall@20"] for p in state["curve"]]
    assert len(values) == 3 and state["best"] == max(values)
    best = tf.train.load_checkpoint(os.path.join(run, "best", "weights"))
    final = tf.train.load_checkpoint(os.path.join(run, "weights", "final"))
    last = tf.train.load_checkpoint(os.path.join(run, "checkpoints", "epoch-003"))
    names = [n for n in best.get_variable_to_shape_map() if "embedding" in n and "OPTIMIZER" not in n]
    assert names
    for n in names:
        np.testing.assert_array_equal(final.get_tensor(n), best.get_tensor(n))
    if state["best_epoch"] != 2:   # the best was not the last epoch: the final weights are not the last ones
        assert any(not np.array_equal(final.get_tensor(n), last.get_tensor(n)) for n in names)


def test_validation_options_are_checked_at_load():
    with pytest.raises(ValueError, match="train.validation.metric: must be recall@K or ndcg@K"):
        config("train.validation={metric: hr@10}")
    with pytest.raises(ValueError, match="train.validation.decay"):
        config("train.validation={decay: 0}")


def test_cosine_schedule_anneals_to_zero_over_all_epochs(files, tmp_path):
    from tfrec_towers.model import learning_rate_schedule

    c = config("train.epochs=4", "train.learning_rate=0.02", "train.lr_schedule=cosine")
    schedule = learning_rate_schedule(c, num_examples=1000)        # 4 steps per epoch at batch 256: T = 16
    assert [round(float(schedule(t)), 6) for t in (0, 8, 16)] == [0.02, 0.01, 0.0]
    with pytest.raises(ValueError, match="set train.validation.decay to 1"):
        learning_rate_schedule(config("train.lr_schedule=cosine", "train.validation={}"), 1000)
    run = str(tmp_path / "run")
    train(c.with_overrides(["train.validation={decay: 1.0, patience: 0}"]), files["train"], run, None, files["items"],
          verbose=0, progress=lambda m: None, valid_pattern=files["test"])
    assert len(lines(os.path.join(run, "epochs.jsonl"))) == 4


def test_min_steps_raises_the_epochs_of_a_small_dataset_only():
    from tfrec_towers.config import Config, packaged
    from tfrec_towers.model import learning_rate_schedule, train_epochs

    config = Config.load(packaged("cf")).with_overrides(["train.epochs=5", "train.min_steps=1200",
                                                         "train.batch_size=1000"])
    assert train_epochs(config, 57_000) == 22          # 58 steps an epoch: 22 epochs reach 1,200 steps
    assert train_epochs(config, 700_000) == 5          # 700 steps an epoch: 5 epochs are 3,500 steps
    schedule = learning_rate_schedule(config, 57_000)
    assert schedule.decay_steps == 22 * 57
    with pytest.raises(ValueError, match="min_steps"):
        config.with_overrides(["train.min_steps=-1"])
