"""Adaptive temperature and margin, plus the symmetric item-anchored term (after Li et al., EMNLP 2023
industry track, JD search: paper defaults alpha 0.5, delta_0 0.01, tau_0 1/30, symmetric weight 0.05).

The paper's exact formulas were not available; this module implements the following design.

For row i (query q_i, positive item v_i) and candidate column j < N (the cross-tower columns; N = rows
of ``candidate_embeddings``), with cosines s:

    g_ij   = stop_gradient(| s(q_i, v_i) - s(v_i, c_j) |)      in [0, 2]
    r_ij   = (1 - alpha) + alpha * g_ij                         in [1 - alpha, 1 + alpha]
    tau_ij = tau_0 * r_ij,   delta_ij = delta_0 * r_ij
    L_i    = -log( e^{s_ii/tau_0} / ( e^{s_ii/tau_0} + sum_{j != i} e^{(s_ij + delta_ij)/tau_ij} ) )

Why: g_ij is small when c_j is as close to the positive item as the query is, i.e. a hard negative
(possibly a false negative). A fixed temperature treats all negatives alike; here a hard negative gets a
smaller temperature (its term is sharpened, the model must separate it more precisely) and a smaller
margin (it is not pushed away by a fixed extra distance that, for a near-duplicate, may be wrong), an
easy one a larger temperature and margin. r is centred on 1 so that tau_0 and delta_0 keep their
meaning as the typical temperature and margin. The positive column keeps tau_0 and no margin.

The stop-gradient on g: without it the model could lower the loss by reshaping item-item similarities
(e.g. making all items alike to move g) instead of matching queries to items, a path to collapse. When
alpha, tau_0, delta_0 are trainable they receive gradient through r, tau and delta; the embeddings
receive none through g.

Symmetric term: the same with the positive item as anchor and its query as positive, over the batch's
B positive items (columns j < B, with the same factors):

    L'_i = -log( e^{s(v_i,q_i)/tau_0} / ( e^{s(v_i,q_i)/tau_0} + sum_{j != i} e^{(s(v_i,v_j) + delta_ij)/tau_ij} ) )

For j < B, g_ij = |s(v_i,q_i) - s(v_i,v_j)| again compares the anchor's positive with the negative.
"""
import math

import tensorflow as tf
import tf_keras as keras

from tfrec_towers.tasks.chain import AuxiliaryLoss, LogitTransform, Untracked
from tfrec_towers.tasks.masks import is_masked, same_entity
from tfrec_towers.tasks.reduction import anchor_softmax_loss, check_reduction, reduce_rows, row_weights
from tfrec_towers.tasks.similarity import cosine, row_cosine

__all__ = ["AdaptiveSymmetricLoss", "AdaptiveTemperatureMargin"]


#: alpha stays below 1 so that r = (1 - alpha) + alpha g, hence tau, stays positive when alpha is trained.
_MAX_ALPHA = 0.99


class AdaptiveTemperatureMargin(LogitTransform):
    """Re-scales the cross-tower columns j < N: positive S/tau_0, others (S + delta)/tau (see module).

    Put it after temperature -> logQ -> accidental hits (and after same-tower negatives, whose appended
    columns beyond N are left untouched). It recovers what those steps added,
    offset = logits - S / base_temperature (logQ; masks), and returns offset + the adapted logit, so
    ``base_temperature`` must be the chain's temperature. Masked entries (<= MIN_LOGIT / 2) keep their
    incoming value. Labels are unchanged.

    Args:
      base_temperature: the temperature the chain applied before this step (undone here).
      alpha: 0.5 (paper): factors r in [0.5, 1.5].
      delta0: 0.01 (paper): the margin, in cosine units.
      tau0: 1/30 (paper): the temperature of the positive and of a negative with g = 1.
      trainable: False (paper's constants); True trains alpha, tau_0 (log-parameterised, stays
        positive) and delta_0 (kept >= 0) with the model.
    """

    def __init__(self, base_temperature: float, alpha: float = 0.5, delta0: float = 0.01, tau0: float = 1 / 30,
                 trainable: bool = False, **kwargs):
        super().__init__(**kwargs)
        if base_temperature <= 0 or tau0 <= 0:
            raise ValueError(f"temperatures must be positive, got base {base_temperature}, tau0 {tau0}")
        if not 0 <= alpha <= _MAX_ALPHA:
            raise ValueError(f"alpha must be in [0, {_MAX_ALPHA}], got {alpha}")
        self.base_temperature = base_temperature
        constant = keras.initializers.Constant
        self.log_tau0 = self.add_weight("log_tau0", shape=(), initializer=constant(math.log(tau0)),
                                        trainable=trainable)
        self.alpha = self.add_weight("alpha", shape=(), initializer=constant(alpha), trainable=trainable,
                                     constraint=lambda x: tf.clip_by_value(x, 0.0, _MAX_ALPHA))
        self.delta0 = self.add_weight("delta0", shape=(), initializer=constant(delta0), trainable=trainable,
                                      constraint=keras.constraints.NonNeg())

    @property
    def tau0(self) -> tf.Tensor:
        return tf.exp(self.log_tau0)

    def factors(self, context):
        """(tau, delta), each [B, N], of every cross-tower column (see the module docstring)."""
        queries = context.query_embeddings
        positives = context.positive_embeddings
        g = tf.stop_gradient(tf.abs(row_cosine(queries, positives)[:, None]
                                    - cosine(positives, context.candidate_embeddings)))
        r = (1.0 - self.alpha) + self.alpha * g
        return self.tau0 * r, self.delta0 * r

    def call(self, logits, labels, context):
        similarity = cosine(context.query_embeddings, context.candidate_embeddings)
        tau, delta = self.factors(context)
        b, n = tf.shape(similarity)[0], tf.shape(similarity)[1]
        adapted = tf.where(tf.cast(tf.eye(b, n), tf.bool), similarity / self.tau0, (similarity + delta) / tau)
        head = logits[:, :n]
        head = tf.where(is_masked(head), head, head - similarity / self.base_temperature + adapted)
        return tf.concat([head, logits[:, n:]], 1), labels


class AdaptiveSymmetricLoss(AuxiliaryLoss):
    """L' (module docstring): the positive item as anchor, its query as positive, the batch's other
    positive items as negatives with the transform's tau/delta factors (columns j < B).

    Items that are the anchor's own item (equal ``candidate_ids``, or identical embeddings) are excluded;
    rows weighted by ``sample_weight`` (0 for rows whose event label is 0), reduced as in PAIR.

    Args:
      adaptive: the ``AdaptiveTemperatureMargin`` of the task's chain, whose alpha/tau_0/delta_0 this term
        shares. It is held untracked (the chain owns its variables), so it must be in the chain.
      weight: w = 0.05 (paper).
      reduction: "sum" (the TFRS task's scale) or "mean" over rows.
    """

    def __init__(self, adaptive: AdaptiveTemperatureMargin, weight: float = 0.05, reduction: str = "sum", **kwargs):
        super().__init__(weight=weight, **kwargs)
        self.refs, self.reduction = Untracked(adaptive=adaptive), check_reduction(reduction)

    def call(self, context):
        adaptive = self.refs.adaptive
        queries, items = context.query_embeddings, context.positive_embeddings
        b = tf.shape(queries)[0]
        tau, delta = adaptive.factors(context)
        ids = None if context.candidate_ids is None else context.candidate_ids[:b]
        per_row = anchor_softmax_loss(row_cosine(items, queries) / adaptive.tau0,
                                      (cosine(items, items) + delta[:, :b]) / tau[:, :b], same_entity(items, ids))
        return reduce_rows(per_row, row_weights(context), self.reduction)
