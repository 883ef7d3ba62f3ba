"""The exported SavedModel: both towers and the item index of one model version, and its signatures.

One SavedModel holds the user tower and the index of item embeddings computed by the same weights,
so user embeddings and the index can never come from different model versions (the version-skew
problem of two-tower serving). Signatures (inputs named after the feature spec; multi-valued
features dense and right-padded with "" as in training):

* ``serving_default``: query features [B] -> ``item_ids`` [B, k] and ``scores`` [B, k], best first;
* ``user_embedding``: query features -> ``embedding`` [B, D];
* ``item_embedding``: candidate features -> ``embedding`` [N, D];
* ``score``: one user's query features (batch 1) and N items' candidate features -> ``scores`` [N],
  the user tower run once;
* ``filtered``: query features, ``k`` (int32, a scalar or [B]: 1 <= k_b <= the export's max-k, K) and
  ``exclude_item_ids`` [B, M] (string, right-padded with ""; unknown IDs ignored) -> ``item_ids`` [B, K],
  ``scores`` [B, K] and ``count`` [B] (int32): row b's best min(k_b, items left) items, none excluded,
  best first, padded past ``count`` with id "" and score -inf;
* ``filtered_allowed``: ``filtered`` plus ``allowed_item_ids`` ([A], one list for every row, or [B, A]):
  only those items are candidates (scored exactly; see ``index.Index._allowed_top_k``). A separate
  signature because a SavedModel signature has no optional inputs: TF Serving requires every input;
* ``*_examples`` variants of these six, taking serialized ``tf.Example`` protos (``examples`` [B];
  ``user_example`` [1] and ``item_examples`` [N] for ``score_examples``), parsed with the spec; the
  filtered ones read ``k`` (int64, one value), ``exclude_item_ids`` and ``allowed_item_ids`` (bytes
  lists, per example) from the same tf.Example;
* ``metadata``: no inputs -> ``metadata``, the JSON of ``assets/tfrec_towers.json``.

With a popularity prior (``popularity_prior.py``) the top-k signatures' ``scores`` are
``q . v + w log(1 + n)``; ``user_embedding``, ``item_embedding`` and ``score`` give the towers' own.
"""
from typing import Dict

import tensorflow as tf

from tfrec_towers.export.layout import ALLOWED_INPUT, EXCLUDE_INPUT, K_INPUT
from tfrec_towers.features.spec import FeatureSpec


__all__ = ["FILTERED_SIGNATURES", "RetrievalModule", "filter_parse_spec", "prior_queries"]


#: The inputs the filtered signatures add to the query features (names no query feature may take).
FILTER_INPUTS = (K_INPUT, EXCLUDE_INPUT, ALLOWED_INPUT)
#: The filtered signatures: name -> whether it takes ``allowed_item_ids``.
FILTERED_SIGNATURES = {"filtered": False, "filtered_allowed": True}


def _one_row(spec: tf.TensorSpec) -> tf.TensorSpec:
    return tf.TensorSpec([1] + spec.shape.as_list()[1:], spec.dtype, name=spec.name)


def filter_input_signature(allowed: bool) -> Dict[str, tf.TensorSpec]:
    """The inputs a filtered signature adds: ``k`` any rank (a scalar or [B], checked in the graph),
    ``exclude_item_ids`` [B, M], and ``allowed_item_ids`` any rank ([A] or [B, A])."""
    specs = {K_INPUT: tf.TensorSpec(None, tf.int32, name=K_INPUT),
             EXCLUDE_INPUT: tf.TensorSpec([None, None], tf.string, name=EXCLUDE_INPUT)}
    if allowed:
        specs[ALLOWED_INPUT] = tf.TensorSpec(None, tf.string, name=ALLOWED_INPUT)
    return specs


def filter_parse_spec(allowed: bool) -> Dict:
    """How the ``*_examples`` filtered signatures read the filter fields from each tf.Example."""
    spec = {K_INPUT: tf.io.FixedLenFeature([], tf.int64),
            EXCLUDE_INPUT: tf.io.RaggedFeature(tf.string, row_splits_dtype=tf.int64)}
    if allowed:
        spec[ALLOWED_INPUT] = tf.io.RaggedFeature(tf.string, row_splits_dtype=tf.int64)
    return spec


def prior_queries(queries: tf.Tensor) -> tf.Tensor:
    """The queries of an index with a popularity prior: ``[q, 1]`` ([B, D + 1]), so that
    ``[q, 1] . [v, p] = q . v + p`` (``popularity_prior.with_prior``)."""
    return tf.concat([queries, tf.ones_like(queries[:, :1])], axis=1)


class RetrievalModule(tf.Module):
    """``prior``: the index holds ``popularity_prior.with_prior`` vectors, so queries reach it as
    ``prior_queries`` (the towers' own signatures are unchanged)."""

    def __init__(self, features: FeatureSpec, query_tower, candidate_tower, index: tf.Module, metadata_path: str,
                 prior: bool = False):
        super().__init__(name="tfrec_towers_retrieval")
        clash = sorted(set(FILTER_INPUTS) & {f.name for f in features.query})
        if clash:
            raise ValueError(f"query feature(s) {clash} take the names of the filtered signatures' inputs "
                             f"{FILTER_INPUTS}: rename them in the config")
        self._features = features
        self.query_tower, self.candidate_tower, self.index = query_tower, candidate_tower, index
        self.metadata_asset = tf.saved_model.Asset(metadata_path)
        self._prior = prior

    # --- the computations -----------------------------------------------------------------------
    def index_queries(self, features):
        """The query tower's embeddings as the index takes them."""
        queries = self.query_tower(features, training=False)
        return prior_queries(queries) if self._prior else queries

    def top_k(self, features):
        scores, ids = self.index(self.index_queries(features))
        return {"item_ids": ids, "scores": scores}

    def filtered_top_k(self, features, k, exclude, allowed=None):
        scores, ids, count = self.index.filtered(self.index_queries(features), k, exclude, allowed)
        return {"item_ids": ids, "scores": scores, "count": count}

    def _filtered_examples(self, examples, allowed: bool):
        query = [f.name for f in self._features.query]
        parsed = self._features.prepare(tf.io.parse_example(
            examples, self._features.parse_spec("query", extra=filter_parse_spec(allowed))))
        return self.filtered_top_k({name: parsed[name] for name in query}, parsed[K_INPUT],
                                   parsed[EXCLUDE_INPUT].to_tensor(""),
                                   parsed[ALLOWED_INPUT].to_tensor("") if allowed else None)

    def user_embedding(self, features):
        return {"embedding": self.query_tower(features, training=False)}

    def item_embedding(self, features):
        return {"embedding": self.candidate_tower(features, training=False)}

    def score(self, user, items):
        query = self.query_tower(user, training=False)  # [1, D]: the user tower runs once
        return {"scores": tf.linalg.matvec(self.candidate_tower(items, training=False), query[0])}

    def _parse(self, examples, side: str):
        return self._features.prepare(tf.io.parse_example(examples, self._features.parse_spec(side)))

    # --- signatures -----------------------------------------------------------------------------
    def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        query, candidate = self._features.input_signature("query"), self._features.input_signature("candidate")
        one_user = {name: _one_row(spec) for name, spec in query.items()}
        examples = tf.TensorSpec([None], tf.string, name="examples")

        def fn(f, **specs):
            return tf.function(f).get_concrete_function(**specs)

        def filtered(allowed):
            def call(**x):
                return self.filtered_top_k({name: x[name] for name in query}, x[K_INPUT], x[EXCLUDE_INPUT],
                                           x.get(ALLOWED_INPUT))
            return fn(call, **query, **filter_input_signature(allowed))

        filtered_signatures = {}
        for name, allowed in FILTERED_SIGNATURES.items():
            filtered_signatures[name] = filtered(allowed)
            filtered_signatures[f"{name}_examples"] = fn(
                lambda examples, allowed=allowed: self._filtered_examples(examples, allowed), examples=examples)
        return {
            **filtered_signatures,
            "serving_default": fn(lambda **x: self.top_k(x), **query),
            "user_embedding": fn(lambda **x: self.user_embedding(x), **query),
            "item_embedding": fn(lambda **x: self.item_embedding(x), **candidate),
            "score": fn(lambda **x: self.score({k: x[k] for k in query}, {k: x[k] for k in candidate}),
                        **one_user, **candidate),
            "serving_default_examples": fn(lambda examples: self.top_k(self._parse(examples, "query")),
                                           examples=examples),
            "user_embedding_examples": fn(lambda examples: self.user_embedding(self._parse(examples, "query")),
                                          examples=examples),
            "item_embedding_examples": fn(
                lambda examples: self.item_embedding(self._parse(examples, "candidate")), examples=examples),
            "score_examples": fn(lambda user_example, item_examples: self.score(
                self._parse(user_example, "query"), self._parse(item_examples, "candidate")),
                user_example=tf.TensorSpec([1], tf.string, name="user_example"),
                item_examples=tf.TensorSpec([None], tf.string, name="item_examples")),
            "metadata": fn(lambda: {"metadata": tf.io.read_file(self.metadata_asset.asset_path)}),
        }
