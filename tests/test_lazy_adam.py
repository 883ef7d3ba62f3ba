"""LazyAdam: rows outside a sparse gradient keep their values and slots; touched rows follow Adam's
formula (NumPy); dense gradients are Adam's own update."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfrec_towers.lazy_adam import LazyAdam
from tfrec_towers.model import make_optimizer


def numpy_adam_rows(x, m, v, g, step, lr=0.01, b1=0.9, b2=0.999, eps=1e-7):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    alpha = lr * np.sqrt(1 - b2 ** step) / (1 - b1 ** step)
    return x - alpha * m / (np.sqrt(v) + eps), m, v


def test_sparse_step_touches_only_the_batch_rows_and_matches_numpy():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(10, 3)).astype(np.float32)
    table = tf.Variable(start)
    opt = LazyAdam(learning_rate=0.01)
    x, m, v = start.astype(np.float64), np.zeros((10, 3)), np.zeros((10, 3))
    batches = [[1, 4, 4, 7], [2, 4], [7, 9, 1]]  # duplicates are summed, as Adam's base class does
    for step, rows in enumerate(batches, start=1):
        g = rng.normal(size=(len(rows), 3)).astype(np.float32)
        opt.apply_gradients([(tf.IndexedSlices(tf.constant(g), tf.constant(rows), tf.constant([10, 3])), table)])
        summed = {}
        for r, gr in zip(rows, g):
            summed[r] = summed.get(r, 0) + gr.astype(np.float64)
        for r, gr in summed.items():
            x[r], m[r], v[r] = numpy_adam_rows(x[r], m[r], v[r], gr, step)
    touched = sorted({r for rows in batches for r in rows})
    untouched = [r for r in range(10) if r not in touched]
    np.testing.assert_allclose(table.numpy(), x, rtol=1e-5, atol=1e-6)
    m_slot, v_slot = opt._momentums[0].numpy(), opt._velocities[0].numpy()
    np.testing.assert_array_equal(table.numpy()[untouched], start[untouched])
    assert not m_slot[untouched].any() and not v_slot[untouched].any()
    np.testing.assert_allclose(m_slot[touched], m[touched], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v_slot[touched], v[touched], rtol=1e-4, atol=1e-9)


def test_keras_adam_rewrites_every_row_lazy_adam_does_not():
    """The reason for LazyAdam: after a first step on every row, a step on one row moves the others
    under Adam (their moments decay but stay nonzero), not under LazyAdam."""
    def run(opt):
        table = tf.Variable(tf.ones([5, 2]))
        opt.apply_gradients([(tf.IndexedSlices(tf.ones([5, 2]), tf.range(5), tf.constant([5, 2])), table)])
        before = table.numpy().copy()
        opt.apply_gradients([(tf.IndexedSlices(tf.ones([1, 2]), tf.constant([0]), tf.constant([5, 2])), table)])
        return before, table.numpy()

    before, after = run(keras.optimizers.Adam(0.1))
    assert not np.allclose(after[1:], before[1:])
    before, after = run(LazyAdam(0.1))
    np.testing.assert_array_equal(after[1:], before[1:])
    assert not np.allclose(after[0], before[0])


def test_dense_gradient_is_adams_update():
    start = np.arange(6, dtype=np.float32).reshape(2, 3)
    grads = [np.full((2, 3), 0.5, np.float32), np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)]
    out = []
    for opt in (keras.optimizers.Adam(0.05), LazyAdam(0.05)):
        w = tf.Variable(start)
        for g in grads:
            opt.apply_gradients([(tf.constant(g), w)])
        out.append(w.numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6)


def test_config_name_builds_it():
    assert isinstance(make_optimizer("lazy_adam", 0.002), LazyAdam)
    assert float(make_optimizer("lazy_adam", 0.002).learning_rate.numpy()) == np.float32(0.002)
