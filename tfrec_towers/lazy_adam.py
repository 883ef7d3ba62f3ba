"""Lazy Adam: Adam whose update of an embedding table touches only the rows in the batch.

tf_keras's Adam (new and legacy) decays the whole m and v tables and rewrites the whole variable on every
step, even for a sparse gradient: for a 40K x 64 item table that is most of a two-tower step (56% of the
Gowalla step in ``benchmarks/profile_training.py``). For an ``IndexedSlices`` gradient g on rows R (the
base optimizer has already summed duplicate rows), with t the global step:

    m_R <- b1 m_R + (1 - b1) g,   v_R <- b2 v_R + (1 - b2) g^2,
    x_R <- x_R - lr sqrt(1 - b2^t) / (1 - b1^t) * m_R / (sqrt(v_R) + eps_hat)

and rows outside R keep their values and slots (their moments are not decayed while they are absent:
the "lazy" part, as TensorFlow Addons' LazyAdam). Dense gradients get Adam's own update. The slots are
Adam's (``m``, ``v``), so checkpoints move between the two.

``OPTIMIZERS``, at the end: the registry of ``train.optimizer``, every optimizer by its config name, and
``OPTIMIZER_SLOTS``, each one's slots; two dict literals, from whose source ``tfrec_towers.choices`` reads
the names and slots for the config's checks. Adding an optimizer: its entry in both, and its test.
"""
import tensorflow as tf
import tf_keras as keras

__all__ = ["LazyAdam", "OPTIMIZERS", "OPTIMIZER_SLOTS"]


@keras.utils.register_keras_serializable(package="tfrec_towers")
class LazyAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with row-sparse updates for ``IndexedSlices`` gradients (module docstring).

    >>> import tfrec_towers, tensorflow as tf
    >>> from tfrec_towers.lazy_adam import LazyAdam
    >>> table = tf.Variable(tf.ones([4, 2]))
    >>> _ = LazyAdam(0.1).apply_gradients([(tf.IndexedSlices(tf.ones([1, 2]), tf.constant([1])), table)])
    >>> table.numpy()[:, 0].round(2).tolist()   # only row 1 moved (by ~lr)
    [1.0, 0.9, 1.0, 1.0]
    """

    def __init__(self, learning_rate=0.001, amsgrad=False, name="LazyAdam", **kwargs):
        if amsgrad:
            raise ValueError("LazyAdam does not implement amsgrad")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        epsilon = self.epsilon * tf.sqrt(1 - tf.pow(beta_2, step)) if self.adaptive_epsilon else self.epsilon
        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        rows, g = gradient.indices, gradient.values
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * g
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(g)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))


#: ``train.optimizer`` -> the optimizer class (built with ``learning_rate=``: ``model.make_optimizer``).
OPTIMIZERS = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD,
              "rmsprop": keras.optimizers.RMSprop, "lazy_adam": LazyAdam}
#: ``train.optimizer`` -> float32 slots the optimizer keeps per trainable weight, beside the weight itself
#: (``config.check_sizes``, through ``choices.OPTIMIZER_SLOTS``): int literals.
OPTIMIZER_SLOTS = {"adam": 2, "adagrad": 1, "sgd": 0, "rmsprop": 1, "lazy_adam": 2}
if tuple(OPTIMIZER_SLOTS) != tuple(OPTIMIZERS):
    raise RuntimeError(f"lazy_adam: OPTIMIZER_SLOTS names {tuple(OPTIMIZER_SLOTS)}, OPTIMIZERS {tuple(OPTIMIZERS)}")
