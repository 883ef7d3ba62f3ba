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
* ``*_examples`` variants of the four, taking serialized ``tf.Example`` protos (``examples`` [B];
  ``user_example`` [1] and ``item_examples`` [N] for ``score_examples``), parsed with the spec;
* ``metadata``: no inputs -> ``metadata``, the JSON of ``assets/tfrec_towers.json``.
"""
from typing import Dict

import tensorflow as tf

from tfrec_towers.features.spec import FeatureSpec


def _one_row(spec: tf.TensorSpec) -> tf.TensorSpec:
    return tf.TensorSpec([1] + spec.shape.as_list()[1:], spec.dtype, name=spec.name)


class RetrievalModule(tf.Module):
    def __init__(self, features: FeatureSpec, query_tower, candidate_tower, index: tf.Module, metadata_path: str):
        super().__init__(name="tfrec_towers_retrieval")
        self._features = features
        self.query_tower, self.candidate_tower, self.index = query_tower, candidate_tower, index
        self.metadata_asset = tf.saved_model.Asset(metadata_path)

    # --- the computations -----------------------------------------------------------------------
    def top_k(self, features):
        scores, ids = self.index(self.query_tower(features, training=False))
        return {"item_ids": ids, "scores": scores}

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

        return {
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
