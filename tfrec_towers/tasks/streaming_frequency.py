"""Streaming frequency estimation of each item's sampling probability, for the logQ correction.

Source: Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations",
RecSys 2019, Section 4 (Algorithm 2, one hash array; Algorithm 3, several).

Why. With in-batch negatives an item is a negative as often as it is a positive somewhere in the batch,
so the softmax over-penalises popular items; logQ subtracts the log of each column's sampling
probability, ``logits_ij - log p_j``. Counting items over the whole log needs a pass over the data and a
vocabulary, and goes stale when the distribution drifts; this estimator learns p online, from the
training stream itself, in O(batch) work per step and fixed memory.

Algorithm. Each item y is hashed by K independent hash functions h_1..h_K into [0, H). Two arrays of
shape [K, H] hold, for each slot, A (the last step the slot was seen) and B (the estimated number of
steps between two occurrences); t is the global step. At training step t (t = 1, 2, ...), for each
distinct slot (k, h) hit by the batch,

    B[k, h] <- (1 - alpha) * B[k, h] + alpha * (t - A[k, h])
    A[k, h] <- t

i.e. B is an exponential moving average of the gap between the steps at which the item occurs (SGD on
the squared error of the gap, learning rate alpha). The item then occurs about once every B steps, so

    p(y) = 1 / max_k B[k, h_k(y)]                                        (Algorithm 3)

A hash collision merges items into one slot, whose gaps are shorter than any of theirs: a shared slot
underestimates the item's gap (overestimates p), never the reverse, so the max over the K arrays picks
the least-collided one (a count-min sketch in reverse).

What p means. B is the gap between *steps* at which y occurs at least once (duplicates of an item in one
batch update its slots once: a slot gets one update per step, however many rows or replicas hit it).
So p estimates P(y is in a batch) = 1 - (1 - q)^b for batch size b and per-example frequency q. For
rare items (b q << 1) this is ~= b q, the expected count of y among the batch's in-batch negatives,
which is exactly what logQ subtracts; a constant factor (b) cancels inside each row's softmax. For items
frequent enough to be in most batches (b q >~ 0.5) p saturates below b q (p <= 1 while b q can exceed 1),
so their correction is smaller than the counts-based one.

Defaults. alpha = 0.01 is the paper's value: the estimate is an average over roughly the item's last
1/alpha = 100 occurrences (weight (1 - alpha)^n on the n-th last gap): smooth (relative noise of B
~ sqrt(alpha / 2) ~= 7% for geometric gaps, less for items present in most batches) yet tracking drift
within a few hundred occurrences. H = 2**20 slots and K = 2 hashes: with n active items an item shares
its slot in one array with probability 1 - exp(-n / H) (100k items: 9%), in both arrays about its square
(0.8%), and only a collision in every array biases p upward; the state is K x H x 12 bytes = 24 MB
(A int64, B float32). The paper shows more hashes help when H is small relative to the vocabulary.

Start and unseen items. The paper leaves the initial values open. A = 0 and t = 0 (steps count from 1,
so A == 0 marks a slot never hit). With the default ``start="first_gap"``, B = 0 means "no gap observed
yet": a slot's first occurrence only records A = t, its second sets B to the gap between the two, and
later ones average as above. With ``start="paper"``, B starts at 1 and every occurrence averages t - A
into it, the first one included (gap t - 0). Either way reads clip B at 1, so p is always finite, in
(0, 1]; an item never seen (or, by default, seen once) has p = 1: the largest possible estimate, i.e.
no logQ boost (log 1 = 0), the conservative choice for an item with no evidence.
Why not the literal start: with alpha = 0.01 the initial B = 1 keeps weight 0.99^n after n occurrences,
so p stays too high until an item has occurred a few hundred times (an item seen every 100 steps: ~30k
steps, longer than many trainings); and the first "gap" t - 0 is the time since the start of training,
not a gap, which for an item that first appears late (a new item at step 100k) is far too long
(B ~ 0.01 t = 1000 then). Simulated (1000 Zipf items, batches of 64, 3000 steps): the median
|log(p_est / p)| of the rarer half is 1.24 with "paper", 0.51 with "first_gap"; top 50 alike (0.03);
for items first appearing after step 2000, "first_gap" is as good while setting B = t - 0 on the first
occurrence (the other obvious start) is off by a factor ~20.

Read before update. With ``training=True`` the estimate returned is read *before* this step's update:
p for step t uses only steps < t. So an item's estimate never depends on the batch it is in (a
first-seen item gets 1, not a value made up from its own occurrence), the estimate equals what
``training=False`` returns for the same state, and the model's logits do not depend on which other rows
share the batch.

Distribution strategies. Under a multi-replica strategy (MirroredStrategy, MultiWorkerMirroredStrategy)
each replica sees only its shard of the global batch, but the estimator must count the global batch (a
step is one global batch). The replica gathers the hashed slots of every replica (``all_gather``;
hashing happens first because collectives do not carry strings) and applies the identical update. The
variables are ON_WRITE with ONLY_FIRST_REPLICA aggregation: the update computed by the first replica is
written to every copy (in place, ``scatter_nd_update`` on each device's copy through
``strategy.extended.update``), so the mirrored copies stay equal. Every replica must call the layer with
``training=True`` in the same step (it is a collective). Each call with ``training=True`` is one step:
call it once per training step.

Cost. Per training step: K string hashes per row, a ``unique`` and sparse gathers / in-place scatters
of O(K x global batch) slots; memory K x H x 12 bytes, saved in checkpoints with the layer.
"""
from typing import Optional

import tensorflow as tf
import tf_keras as keras

__all__ = ["StreamingFrequency"]


#: Initialisations of B (see the module docstring).
STARTS = ("first_gap", "paper")

#: SipHash keys of the K hash functions (``tf.strings.to_hash_bucket_strong``): fixed, so that a
#: restored checkpoint finds each item in the same slots. Hash k uses ``_hash_key(k)``.
_KEY_BASE = (0x5EED5EED, 0x0F0F1234)


def _hash_key(k: int):
    return [_KEY_BASE[0] + 2 * k, _KEY_BASE[1] + 7919 * k]


class StreamingFrequency(keras.layers.Layer):
    """Per-batch sampling probability of string item IDs, estimated from the training stream (see the
    module docstring: Yi et al. 2019, Algorithms 2-3).

    ``layer(ids, training=False)`` -> p, a float32 tensor of ids' shape, p = 1 / max_k B[k, h_k(id)] in
    (0, 1]: ~= batch size x the item's frequency for rare items (the logQ term, up to a constant).
    With ``training=True`` the estimate is read first, then the state advances one step using the
    ids (of every replica, under a distribution strategy).

    Args:
      hash_size: H, slots per hash array.
      num_hashes: K, independent hash functions / arrays; p takes the max gap over them.
      learning_rate: alpha in (0, 1], the moving average's step (memory ~1/alpha occurrences).
      start: "first_gap" (B is unset until the second occurrence, then the first gap observed) or
        "paper" (B starts at 1; the first occurrence averages in t - 0). See the module docstring.

    State (non-trainable variables, in checkpoints): ``last_step`` (A, int64 [K, H]), ``gap``
    (B, float32 [K, H]) and ``step`` (t, int64 scalar).
    """

    def __init__(self, hash_size: int = 2**20, num_hashes: int = 2, learning_rate: float = 0.01, *,
                 start: str = "first_gap", **kwargs):
        super().__init__(**kwargs)
        if int(hash_size) < 1 or int(num_hashes) < 1:
            raise ValueError(f"hash_size and num_hashes must be >= 1, got {hash_size}, {num_hashes}")
        if not 0.0 < float(learning_rate) <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate}")
        self.hash_size = int(hash_size)
        self.num_hashes = int(num_hashes)
        self.learning_rate = float(learning_rate)
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}")
        self.start = start
        shape = [self.num_hashes, self.hash_size]
        # ON_WRITE + ONLY_FIRST_REPLICA: under a strategy, mirrored copies written from the first replica.
        common = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA, experimental_autocast=False)
        self.last_step = self.add_weight(name="last_step", shape=shape, dtype=tf.int64,
                                         initializer="zeros", **common)  # A
        self.gap = self.add_weight(name="gap", shape=shape, dtype=tf.float32,  # B; 0: no gap seen yet
                                   initializer="ones" if start == "paper" else "zeros", **common)
        self.step = self.add_weight(name="step", shape=[], dtype=tf.int64, initializer="zeros", **common)  # t

    def hash_slots(self, ids: tf.Tensor) -> tf.Tensor:
        """[n] IDs (strings; integers are formatted) -> [n, K] int64 slots, column k in [0, H)."""
        ids = tf.convert_to_tensor(ids)
        if ids.dtype != tf.string:
            if not ids.dtype.is_integer:
                raise TypeError(f"StreamingFrequency: ids must be strings or integers, got {ids.dtype}")
            ids = tf.strings.as_string(ids)
        ids = tf.reshape(ids, [-1])
        return tf.stack([tf.strings.to_hash_bucket_strong(ids, self.hash_size, key=_hash_key(k))
                         for k in range(self.num_hashes)], axis=1)

    def _estimate(self, slots: tf.Tensor) -> tf.Tensor:
        """[n, K] slots -> [n] p = 1 / max_k B[k, slot_k] (B clipped at 1: p finite, <= 1)."""
        hashes = tf.broadcast_to(tf.range(self.num_hashes, dtype=tf.int64), tf.shape(slots))
        gaps = tf.gather_nd(self.gap, tf.stack([hashes, slots], axis=-1))  # [n, K]
        return 1.0 / tf.maximum(tf.reduce_max(gaps, axis=1), 1.0)

    def call(self, ids, training=False):
        ids = tf.convert_to_tensor(ids)
        slots = self.hash_slots(ids)
        p = tf.reshape(self._estimate(slots), tf.shape(ids))
        if _static_bool(training):
            # Reads above happen before the writes below (program order; tf.function's automatic
            # control dependencies keep it for reads and writes of the same variables).
            with tf.control_dependencies([p]):
                self._advance(slots)
        return p

    def expected_count(self, ids, batch_size=None, training=False):
        """Each item's expected count among a batch's in-batch columns, the estimators' shared contract
        (``ItemFrequency.expected_count`` gives B q): here p ~= B q, learnt from the batches themselves,
        so ``batch_size`` is not needed. ``training`` advances the estimate (see ``call``)."""
        return self(ids, training=training)

    def _advance(self, slots: tf.Tensor) -> None:
        """One step: t += 1, then the update for each distinct slot hit by the global batch."""
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            slots = context.all_gather(slots, axis=0)  # every replica's rows: the global batch
        flat = tf.reshape(tf.transpose(slots) + tf.range(self.num_hashes, dtype=tf.int64)[:, None]
                          * self.hash_size, [-1])
        unique, _ = tf.unique(flat)  # duplicates (rows, replicas, collisions) update a slot once
        indices = tf.stack([unique // self.hash_size, unique % self.hash_size], axis=1)
        t = self.step + 1  # this step's number (read before the update)
        last = tf.gather_nd(self.last_step, indices)
        gap = tf.gather_nd(self.gap, indices)
        observed = tf.cast(t - last, tf.float32)
        new_gap = (1.0 - self.learning_rate) * gap + self.learning_rate * observed
        if self.start == "first_gap":  # first occurrence (A == 0): no gap yet; second (B == 0): B = the gap
            new_gap = tf.where(last == 0, gap, tf.where(gap == 0.0, observed, new_gap))
        new_last = tf.fill(tf.shape(unique), t)
        updates = [(self.step, None, t), (self.last_step, indices, new_last), (self.gap, indices, new_gap)]
        if context is None:  # cross-replica context (e.g. a strategy's scope, outside strategy.run)
            _write(tf.distribute.get_strategy(), updates)
        else:
            context.merge_call(_write, args=(updates,))

    def get_config(self):
        config = super().get_config()
        config.update(hash_size=self.hash_size, num_hashes=self.num_hashes, learning_rate=self.learning_rate,
                      start=self.start)
        return config


def _write(strategy, updates) -> None:
    """Apply (variable, indices or None, values) updates in cross-replica context: the first replica's
    values (ONLY_FIRST_REPLICA; all replicas computed the same ones) are written in place to every copy."""
    for variable, indices, values in updates:
        values = strategy.experimental_local_results(values)[0]
        if indices is None:
            strategy.extended.update(variable, _assign, args=(values,))
        else:
            indices = strategy.experimental_local_results(indices)[0]
            strategy.extended.update(variable, _scatter, args=(indices, values))


def _assign(variable, value):
    return variable.assign(value)


def _scatter(variable, indices, values):
    return variable.scatter_nd_update(indices, values)


def _static_bool(training: Optional[object]) -> bool:
    """Keras's ``training`` (None, a bool, or a constant tensor) as a Python bool: the update is only
    built when it is statically true (a collective cannot sit inside a tf.cond)."""
    if training is None or isinstance(training, bool):
        return bool(training)
    value = tf.get_static_value(training)
    if value is None:
        raise ValueError("StreamingFrequency needs a static `training` (Python bool), got a symbolic tensor")
    return bool(value)
