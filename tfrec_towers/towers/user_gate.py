"""SimpleX's user tower (Mao et al., CIKM 2021, eq. 1): the user's ID embedding and their history, mixed
by a gate:

    u = dropout(g e_id + (1 - g) W pool(history))

e_id remembers what is particular to the user; W pool(history) (pool: the sequence feature's pooling,
mean or attention; W linear, no bias) places them among the items they chose, which generalises to users
with little training data and to items near theirs. A fixed g (SimpleX: 0.8) keeps the ID from taking over
what the history can say; ``learned`` starts at g and trains sigmoid(b).

``model.user_gate.history_gradient: false`` makes pool(history) a constant to the gate (``Tower``'s
``constant_inputs``): W still learns, the item table learns from the item side alone. A history row's
gradient is scaled by (1 - g) / len, yet Adam moves every row it touches by about the learning rate,
and every history item of the batch must be updated (about 13k of Gowalla's 41k rows a step). Default
true: on Gowalla valid, false makes ``cf``'s step 2.1x faster (``benchmarks/profile_training.py``: 50.2
against 106.8 ms) but loses 12% Recall@20 (0.1786 against 0.2027), which the time saved does not buy back
(``cf`` of the time, 5 epochs, had 0.1836 after 2 of them).
"""
import math
from typing import Tuple

import tensorflow as tf
import tf_keras as keras


__all__ = ["UserGate"]


class UserGate(keras.layers.Layer):
    """[B, D_id + D_rest] concatenated encodings -> [B, D_id] user vector (module docstring).

    Args:
      id_columns: (start, stop) of the ID embedding in the concatenated encodings; the other columns
        (the pooled history and any other query feature) go through W.
      weight: g in (0, 1); learned: train the gate (initialised at g).
      dropout: on the user vector (SimpleX: 0.1).
    """

    def __init__(self, id_columns: Tuple[int, int], weight: float = 0.8, learned: bool = False,
                 dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(id_columns[0]), int(id_columns[1])
        self.history = keras.layers.Dense(self.stop - self.start, use_bias=False, name="history_projection")
        self.gate_logit = self.add_weight("gate_logit", shape=[], trainable=learned,
                                          initializer=keras.initializers.Constant(math.log(weight / (1 - weight))))
        self.dropout = keras.layers.Dropout(dropout) if dropout else None

    def call(self, x, training=False):
        e_id = x[:, self.start:self.stop]
        rest = tf.concat([x[:, :self.start], x[:, self.stop:]], axis=-1)
        g = tf.sigmoid(self.gate_logit)
        u = g * e_id + (1.0 - g) * self.history(rest)
        return self.dropout(u, training=training) if self.dropout is not None else u
