"""The feature spec: which raw log fields feed the query (user) tower and the candidate (item) tower.

Everything downstream is derived from it: the ``tf.io`` parse spec for tf.Example TFRecords, the
conversion of parsed tensors to model inputs, each tower's Keras inputs and encoders, and the
serving signatures. A spec is built from Python objects or from the equivalent dict (YAML/JSON)::

    query:
      - {name: user_id, type: id}
      - {name: item_history, type: sequence, vocab_from: item_id, max_len: 50}
    candidate:
      - {name: item_id, type: id}
      - {name: item_title, type: text}

Model inputs are dense: multi-valued features are right-padded with ``""`` (strings), which every
encoder masks. Dense inputs keep serving signatures plain tensors, as TF Serving's Predict needs.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
import yaml

SIDES = ("query", "candidate")
_DTYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}


@dataclasses.dataclass
class Feature:
    """One raw log field and how its tower encodes it."""

    name: str
    type: ClassVar[str] = ""
    #: Raw dtype in the tf.Example: "string" (bytes_list), "int64" or "float32".
    dtype: str = "string"

    #: Whether a record holds a list of values (a field of the categorical types; fixed elsewhere).
    multivalued: ClassVar[bool] = False

    def parse_feature(self):
        """The tf.io feature for this field (scalars required unless a default is given)."""
        if self.multivalued:
            return tf.io.RaggedFeature(_DTYPES[self.dtype], row_splits_dtype=tf.int64)
        default = getattr(self, "default", None)
        return tf.io.FixedLenFeature([], _DTYPES[self.dtype], default_value=default)

    @property
    def input_dtype(self) -> tf.DType:
        """Dtype the model sees: IDs and categories are strings, whatever the raw dtype."""
        return tf.string

    def input_signature(self) -> tf.TensorSpec:
        shape = [None, None] if self.multivalued else [None]
        return tf.TensorSpec(shape, self.input_dtype, name=self.name)

    def prepare(self, parsed):
        """Parsed tensor (dense or ragged, raw dtype) -> model input (dense, input dtype)."""
        x = parsed
        if x.dtype != self.input_dtype:
            x = tf.strings.as_string(x) if self.input_dtype == tf.string else tf.cast(x, self.input_dtype)
        if isinstance(x, tf.RaggedTensor):
            x = x.to_tensor(default_value="" if self.input_dtype == tf.string else 0)
        return x

    # --- config --------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        out = {"name": self.name, "type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "name" and value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def encoder_key(self) -> Tuple:
        """Everything but the name: two features with equal keys can share one encoder (SDE)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("vocab_from", None)
        return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in d.items()))

    @property
    def vocab_source(self) -> Optional[str]:
        """Name of the feature whose vocabulary this one uses (itself), or None (hashing/none)."""
        return None

    @property
    def tower_input(self) -> bool:
        """Whether a tower encodes this feature (every feature but an identifier-only ID)."""
        return True


@dataclasses.dataclass
class CategoricalFeature(Feature):
    """Profile or attribute: string lookup (vocabulary from the training logs) or hashing -> embedding.

    Defaults: ``num_oov=1`` sends every unseen value to one bucket; ``min_count=1`` keeps every value
    seen in training. ``multivalued`` fields (e.g. genres) are mean-pooled over their values.
    """

    type: ClassVar[str] = "categorical"
    embedding_dim: int = 16
    multivalued: bool = False
    vocabulary: Optional[List[str]] = None
    hash_buckets: int = 0
    num_oov: int = 1
    min_count: int = 1
    max_vocab: Optional[int] = None
    default: Optional[str] = None

    min_embedding_dim: ClassVar[int] = 1

    @property
    def tower_input(self) -> bool:
        """Whether a tower encodes this feature (False: an ID that only identifies items)."""
        return self.embedding_dim > 0

    def __post_init__(self):
        if self.hash_buckets < 0 or self.num_oov < 0 or self.embedding_dim < self.min_embedding_dim:
            raise ValueError(f"feature '{self.name}': hash_buckets/num_oov must be >= 0 and embedding_dim >= "
                             f"{self.min_embedding_dim}")
        if self.hash_buckets and self.vocabulary:
            raise ValueError(f"feature '{self.name}': give either hash_buckets or vocabulary, not both")

    @property
    def vocab_source(self) -> Optional[str]:
        return None if self.hash_buckets else self.name


@dataclasses.dataclass
class IdFeature(CategoricalFeature):
    """An entity ID (user_id, item_id): like a category, with a larger default embedding.

    Use ``hash_buckets`` for unbounded ID spaces (no vocabulary pass; collisions accepted).
    ``embedding_dim: 0`` makes the candidate's item ID an identifier only (catalog, accidental hits,
    logQ), not a tower input: for text search, where documents unseen in training are most of the
    corpus and an ID embedding learnt from a few hundred pairs would be noise for the rest.
    """

    type: ClassVar[str] = "id"
    embedding_dim: int = 32
    min_embedding_dim: ClassVar[int] = 0


@dataclasses.dataclass
class NumericFeature(Feature):
    """A number, normalised as (x - mean) / std with statistics from the training logs.

    NaN or inf is an error naming the feature unless ``impute: mean``, which replaces it by the
    training mean (0 after normalisation). ``default`` fills a field absent from a record.
    """

    type: ClassVar[str] = "numeric"
    dtype: str = "float32"
    normalize: bool = True
    impute: Optional[str] = None
    default: Optional[float] = None

    def __post_init__(self):
        if self.impute not in (None, "mean"):
            raise ValueError(f"feature '{self.name}': impute must be null or 'mean', got {self.impute!r}")
        if self.default is not None:
            self.default = int(self.default) if self.dtype == "int64" else float(self.default)

    @property
    def input_dtype(self):
        return tf.float32


@dataclasses.dataclass
class TimestampFeature(Feature):
    """Unix seconds -> calendar buckets (UTC + ``utc_offset_hours``), one embedding each.

    Buckets: hour (24), dow (day of week, 7), hour_of_week (168). Default hour+dow: daily and
    weekly rhythms are the context signals that matter most in event logs.
    """

    type: ClassVar[str] = "timestamp"
    dtype: str = "int64"
    buckets: Tuple[str, ...] = ("hour", "dow")
    embedding_dim: int = 8
    utc_offset_hours: int = 0
    default: Optional[int] = None

    BUCKET_SIZES: ClassVar[Dict[str, int]] = {"hour": 24, "dow": 7, "hour_of_week": 168}

    def __post_init__(self):
        self.buckets = tuple(self.buckets)
        unknown = [b for b in self.buckets if b not in self.BUCKET_SIZES]
        if unknown or not self.buckets:
            raise ValueError(f"feature '{self.name}': buckets must be among {sorted(self.BUCKET_SIZES)}, got {unknown}")

    @property
    def input_dtype(self):
        return tf.int64


@dataclasses.dataclass
class SequenceFeature(Feature):
    """Behaviour history: variable-length list of IDs, most recent last; empty lists are valid.

    Only the last ``max_len`` values are kept. ``vocab_from`` names an ID feature (e.g. item_id)
    whose vocabulary is reused and, with ``share_embedding`` (default), its embedding table too, so
    history items and candidates live in one space. Pooling: mean, sum or attention (additive
    attention with a learned query, masked).
    """

    type: ClassVar[str] = "sequence"
    vocab_from: Optional[str] = None
    share_embedding: bool = True
    embedding_dim: int = 32
    max_len: int = 50
    pooling: str = "mean"
    hash_buckets: int = 0
    num_oov: int = 1
    min_count: int = 1
    max_vocab: Optional[int] = None

    POOLINGS: ClassVar[Tuple[str, ...]] = ("mean", "sum", "attention")
    multivalued: ClassVar[bool] = True

    def __post_init__(self):
        if self.pooling not in self.POOLINGS:
            raise ValueError(f"feature '{self.name}': pooling must be one of {self.POOLINGS}, got {self.pooling!r}")
        if self.max_len <= 0:
            raise ValueError(f"feature '{self.name}': max_len must be positive")

    @property
    def vocab_source(self) -> Optional[str]:
        if self.hash_buckets:
            return None
        return self.vocab_from or self.name


@dataclasses.dataclass
class TextFeature(Feature):
    """Free text through DSSM letter-trigram word hashing (``good`` -> ``#go goo ood od#``).

    Trigrams are hashed into ``num_buckets`` (default 2**15: the DSSM paper's 30K trigram vocabulary
    with few collisions) and the bag of trigrams is pooled from embeddings, which equals a dense layer
    applied to the trigram vector. ``combiner``:

    * ``mean`` / ``sum``: of the trigrams' embeddings (counts as weights);
    * ``tfidf``: sum_t (1 + ln tf_t) * idf_t * e_t, idf_t = ln((1 + n) / (1 + df_t)) + 1 over the n texts
      of the training logs, or of the catalog with ``data.idf_from: items`` (scikit-learn's sublinear,
      smoothed TF-IDF), and the trigram table starts
      as one seeded Gaussian random projection shared by every text encoder of the same shape. At
      initialisation the cosine of two texts is then about their trigram TF-IDF cosine
      (Johnson-Lindenstrauss; closer with a larger ``embedding_dim``) in both towers, so training
      starts from the lexical match instead of noise: the choice for text search.
    """

    type: ClassVar[str] = "text"
    num_buckets: int = 32768
    embedding_dim: int = 32
    combiner: str = "mean"
    default: Optional[str] = None

    COMBINERS: ClassVar[Tuple[str, ...]] = ("mean", "sum", "tfidf")

    def __post_init__(self):
        if self.combiner not in self.COMBINERS:
            raise ValueError(f"feature '{self.name}': combiner must be one of {self.COMBINERS}, got {self.combiner!r}")
        if self.num_buckets <= 0 or self.embedding_dim <= 0:
            raise ValueError(f"feature '{self.name}': num_buckets and embedding_dim must be positive")


FEATURE_TYPES = {cls.type: cls for cls in (IdFeature, CategoricalFeature, NumericFeature, TimestampFeature,
                                            SequenceFeature, TextFeature)}


def feature_from_dict(d: Dict[str, Any]) -> Feature:
    d = dict(d)
    if "name" not in d or "type" not in d:
        raise ValueError(f"each feature needs 'name' and 'type', got {d}")
    kind = d.pop("type")
    if kind not in FEATURE_TYPES:
        raise ValueError(f"feature '{d['name']}': unknown type {kind!r}; known: {sorted(FEATURE_TYPES)}")
    cls = FEATURE_TYPES[kind]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"feature '{d['name']}' ({kind}): unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    return cls(**d)


@dataclasses.dataclass
class FeatureSpec:
    """Query-side and candidate-side features, plus which candidate feature is the item ID."""

    query: List[Feature]
    candidate: List[Feature]
    #: The candidate feature identifying an item: used for the catalog, accidental hits and logQ.
    item_id: str = "item_id"

    def __post_init__(self):
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature(s) listed twice: {dupes}")
        if not self.query or not self.candidate:
            raise ValueError("the spec needs at least one query feature and one candidate feature")
        if self.item_id not in [f.name for f in self.candidate]:
            raise ValueError(f"item_id feature '{self.item_id}' must be a candidate feature")
        by_name = self.by_name
        for f in self.features:
            if f.dtype not in _DTYPES:
                raise ValueError(f"feature '{f.name}': dtype must be one of {sorted(_DTYPES)}, got {f.dtype!r}")
            src = getattr(f, "vocab_from", None)
            if src and src not in by_name:
                raise ValueError(f"feature '{f.name}': vocab_from names unknown feature '{src}'")
            if src and not isinstance(by_name[src], CategoricalFeature):
                raise ValueError(f"feature '{f.name}': vocab_from must name an id/categorical feature")

    @property
    def features(self) -> List[Feature]:
        return list(self.query) + list(self.candidate)

    @property
    def by_name(self) -> Dict[str, Feature]:
        return {f.name: f for f in self.features}

    def side(self, side: str) -> List[Feature]:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}")
        return list(self.query if side == "query" else self.candidate)

    def parse_spec(self, side: Optional[str] = None, extra: Optional[Dict[str, Any]] = None):
        """``tf.io.parse_example`` features dict (one side, or both)."""
        feats = self.features if side is None else self.side(side)
        out = {f.name: f.parse_feature() for f in feats}
        out.update(extra or {})
        return out

    def prepare(self, parsed: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Parsed batch -> model inputs (features the spec does not name pass through unchanged)."""
        by_name = self.by_name
        return {k: by_name[k].prepare(v) if k in by_name else v for k, v in parsed.items()}

    def input_signature(self, side: str) -> Dict[str, tf.TensorSpec]:
        return {f.name: f.input_signature() for f in self.side(side)}

    def dummy_batch(self) -> Dict[str, tf.Tensor]:
        """A one-row batch of model inputs ("" / 0), to create variables or probe output shapes."""
        batch = {}
        for feature in self.features:
            spec = feature.input_signature()
            batch[feature.name] = tf.fill([1] * len(spec.shape), "" if spec.dtype == tf.string else tf.cast(0, spec.dtype))
        return batch

    # --- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return {"item_id": self.item_id, "query": [f.to_dict() for f in self.query],
                "candidate": [f.to_dict() for f in self.candidate]}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FeatureSpec":
        unknown = sorted(set(d) - {"query", "candidate", "item_id"})
        if unknown:
            raise ValueError(f"feature spec: unknown key(s) {unknown}; expected query, candidate, item_id")
        return cls(query=[feature_from_dict(f) for f in d.get("query") or []],
                   candidate=[feature_from_dict(f) for f in d.get("candidate") or []],
                   item_id=d.get("item_id", "item_id"))

    @classmethod
    def load(cls, path: str) -> "FeatureSpec":
        return cls.from_dict(load_mapping(path))


def load_mapping(path: str) -> Dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON file -> dict."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def check_shareable(query: Sequence[Feature], candidate: Sequence[Feature]) -> None:
    """Fully shared towers (SDE) need the two sides' features to pair up with equal encoders.

    A shared encoder is built from the query feature, so paired features must also use the same
    vocabulary (both hashed/vocabulary-free, or the same ``vocab_from`` source): a user_id/item_id
    pair would otherwise look item IDs up in the user vocabulary.
    """
    if len(query) != len(candidate) or any(q.encoder_key() != c.encoder_key() or q.vocab_source != c.vocab_source
                                           for q, c in zip(query, candidate)):
        raise ValueError(
            "sharing 'full' (SDE) needs the query and candidate sides to list features of the same types "
            "and options, using the same vocabulary, in the same order (e.g. query text and document "
            f"text); got query {[(q.name, q.type) for q in query]} and candidate "
            f"{[(c.name, c.type) for c in candidate]}. Use sharing 'projection' (ADE-SPL) or 'none' for "
            "user/item features.")
