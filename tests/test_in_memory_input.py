"""data.in_memory: the training logs parsed once, each epoch a permutation of every example (issue 16)."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import numpy as np
import tensorflow as tf

from tfrec_towers.data import reader


def _columns(n):
    history = tf.ragged.constant([[str(j) for j in range(i % 4)] for i in range(n)])
    return {"item_id": tf.constant([f"i{i}" for i in range(n)]), "label": tf.range(n, dtype=tf.int64),
            "item_history": history}


def _epoch(ds):
    return [b for b in ds]


def test_every_example_once_per_epoch_in_a_new_order():
    n, batch = 103, 10
    ds = reader.in_memory_dataset(_columns(n), lambda p: {**p, "item_history": p["item_history"].to_tensor("")},
                                  batch, seed=3)
    first, second = _epoch(ds), _epoch(ds)
    for epoch in (first, second):
        assert [int(b["label"].shape[0]) for b in epoch] == [10] * 10 + [3]
        labels = np.concatenate([b["label"].numpy() for b in epoch])
        assert sorted(labels.tolist()) == list(range(n))
        for b in epoch:  # the rows' features stay together
            ids = [int(v.decode()[1:]) for v in b["item_id"].numpy()]
            assert ids == b["label"].numpy().tolist()
            lengths = (b["item_history"].numpy() != b"").sum(axis=1)
            assert lengths.tolist() == [i % 4 for i in ids]
    order = lambda e: np.concatenate([b["label"].numpy() for b in e]).tolist()  # noqa: E731
    assert order(first) != order(second)
    again = reader.in_memory_dataset(_columns(n), lambda p: p, batch, seed=3)
    assert order(_epoch(again)) == order(first)  # seeded


def test_no_shuffle_keeps_the_file_order():
    ds = reader.in_memory_dataset(_columns(25), lambda p: p, 10, shuffle=False)
    assert np.concatenate([b["label"].numpy() for b in ds]).tolist() == list(range(25))


def test_load_examples_keeps_the_selected_rows(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for i in range(7):
            ex = tf.train.Example(features=tf.train.Features(feature={
                "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"i{i}".encode()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2]))}))
            w.write(ex.SerializeToString())
    spec = {"item_id": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    columns, report = reader.load_examples([path], spec, keep=lambda p: p["label"] >= 1, batch_size=3)
    assert report.records == 7
    assert columns["item_id"].numpy().tolist() == [b"i1", b"i3", b"i5"]
