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

Each feature type is one class here, registered by its ``type`` in ``FEATURE_TYPES``, and owns what
is particular to it: its parsing (``parse_feature``, ``prepare``), its encoder (``encoder(factory)``:
which of ``features.encoders.EncoderFactory``'s builders makes it), the statistics it needs from the
training logs (``vocab_source``, ``counts_moments``, ``idf_buckets``) and its sizes (``encoding_width``,
``embedding_table``). No other module tells the types apart.
"""
from __future__ import annotations

import dataclasses
import json
import re
import reprlib
import typing
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
import yaml

__all__ = ["CategoricalFeature", "FEATURE_TYPES", "Feature", "FeatureSpec", "IdFeature", "NumericFeature", "SIDES",
           "SequenceFeature", "TextFeature", "TimestampFeature", "check_shareable", "check_type", "load_mapping",
           "load_yaml", "quote", "select"]


SIDES = ("query", "candidate")
_DTYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}


# --- checking what a config file holds ------------------------------------------------------------

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 40, 40, 30


def quote(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for every error that quotes a value from a config
    or spec. Bounded work too (``reprlib``: a few items per level, two levels), so a value that YAML
    aliases expand to a billion strings is quoted in microseconds instead of exhausting memory."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_type(where: str, value: Any, hint) -> Any:
    """``value`` if it fits the annotation ``hint`` (bool, int, float, str, Any, Optional, List and
    Tuple of those), else ValueError "WHERE: expected TYPE, got VALUE" (the value quoted short).
    A float option takes an int; bool is not an int."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        return check_type(where, value, next(a for a in args if a is not type(None)))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {quote(value)}")
        item = args[0] if args else Any
        return [check_type(where, v, item) for v in value]
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool), str: isinstance(value, str)}
    if not ok.get(hint, True):
        raise ValueError(f"{where}: expected {hint.__name__}, got {quote(value)}")
    return value


#: Limits of a config document: how deep its nesting goes, and how many nodes YAML aliases may add
#: to it once expanded (a config's own structure is 6 levels deep and uses few aliases, if any).
MAX_DEPTH = 64
MAX_ALIAS_EXPANSION = 100_000


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader refusing documents nested deeper than ``MAX_DEPTH`` (the composer recurses
    once per level: 50,000 levels were a RecursionError) and documents whose aliases expand them by
    more than ``MAX_ALIAS_EXPANSION`` nodes (a "billion laughs" document: 9 levels of 9 aliases parse
    in microseconds into 9^9 strings that any walk over the value then expands). Both are checked on
    the composed node graph, before any Python value is built."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels (line {mark.line + 1}, column {mark.column + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return self.construct_document(node)


# Floats written with an exponent and no dot (``1e-5``, ``2E3``) are floats, as in YAML 1.2 and JSON:
# PyYAML's YAML 1.1 resolver reads them as strings, so ``learning_rate: 1e-3`` or ``--set
# model.embedding_l2=1e-5`` failed with "expected float, got '1e-5'".
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _check_expansion(root: yaml.Node) -> None:
    """ValueError if aliases make the document's tree (each alias counted as the nodes it stands for)
    larger than its distinct nodes by more than ``MAX_ALIAS_EXPANSION``, or make it recursive."""
    def children(node):
        if isinstance(node, yaml.SequenceNode):
            return node.value
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return ()

    sizes: Dict[int, int] = {}
    open_nodes = set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children(node))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ValueError(f"a recursive alias (line {node.start_mark.line + 1}): a config is a tree")
        open_nodes.add(key)
        stack.append((node, True))
        for child in children(node):
            if id(child) in open_nodes:
                raise ValueError(f"a recursive alias (line {child.start_mark.line + 1}): a config is a tree")
            if id(child) not in sizes:
                stack.append((child, False))
    expanded, distinct = sizes[id(root)], len(sizes)
    if expanded - distinct > MAX_ALIAS_EXPANSION:
        raise ValueError(f"its aliases expand it from {distinct} to {expanded} values, more than "
                         f"{MAX_ALIAS_EXPANSION} added (a 'billion laughs' document?)")


def _depth(data: Any) -> int:
    """How deep lists and mappings nest in ``data`` (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def load_yaml(text_or_stream) -> Any:
    """``yaml.safe_load`` with the limits of ``_ConfigLoader``; a YAML error becomes a ValueError."""
    try:
        return yaml.load(text_or_stream, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:  # its message quotes a short snippet of the document
        text = str(e)
        raise ValueError(f"not valid YAML: {text if len(text) <= 400 else text[:397] + '...'}") from None


@dataclasses.dataclass
class Feature:
    """One raw log field and how its tower encodes it."""

    name: str
    type: ClassVar[str] = ""
    #: Raw dtype in the tf.Example: "string" (bytes_list), "int64" or "float32".
    dtype: str = "string"

    #: Whether a record holds a list of values (a field of the categorical types; fixed elsewhere).
    multivalued: ClassVar[bool] = False

    # Options only some types have, with the value that means "not used" for the others (plain class
    # attributes, not fields: a type that has the option declares it as a field, which overrides these).
    default = None           # the value of a field absent from a record (None: the field is required)
    vocabulary = None        # a fixed vocabulary (categorical types), instead of the training logs'
    vocab_from = None        # the feature whose vocabulary this one reuses (sequence)
    share_embedding = True   # with ``vocab_from``: the source's embedding table too (sequence)
    oov_rate = 0.0           # share of training lookups sent to the OOV row (categorical types)

    def parse_feature(self):
        """The tf.io feature for this field (scalars required unless a default is given)."""
        if self.multivalued:
            return tf.io.RaggedFeature(_DTYPES[self.dtype], row_splits_dtype=tf.int64)
        return tf.io.FixedLenFeature([], _DTYPES[self.dtype], default_value=self.default)

    @property
    def input_dtype(self) -> tf.DType:
        """Dtype the model sees: IDs and categories are strings, whatever the raw dtype."""
        return tf.string

    def input_signature(self) -> tf.TensorSpec:
        shape = [None, None] if self.multivalued else [None]
        return tf.TensorSpec(shape, self.input_dtype, name=self.name)

    def cut(self, parsed):
        """A parsed batch of this feature cut to what the encoder keeps (``SequenceFeature``: its last
        ``max_len`` values); the others keep all."""
        return parsed

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

    # --- encoder, statistics and sizes ---------------------------------------------------------------
    def encoder(self, factory):
        """This feature's Keras encoder, made by ``factory`` (``features.encoders.EncoderFactory``)."""
        raise TypeError(f"no encoder for feature type {type(self).__name__}")

    #: Whether the statistics pass takes the mean and standard deviation of the values (``FeatureStats.numeric``).
    counts_moments: ClassVar[bool] = False
    #: Whether a NaN or inf value is an error the reader's scan reports (numeric values without ``impute``).
    finite_required: ClassVar[bool] = False

    @property
    def idf_buckets(self) -> int:
        """The trigram buckets whose document frequencies the statistics pass counts in this feature's
        texts (``FeatureStats.idf``), or 0: none."""
        return 0

    @property
    def encoding_width(self) -> int:
        """Width of this feature's encoding in its tower's input (the concatenation the first layer reads)."""
        return self.embedding_dim if self.tower_input else 0

    def embedding_table(self, by_name: Dict[str, "Feature"], vocab_size=None) -> Optional[Tuple[Tuple, Dict[str, Any]]]:
        """(key, {"feature", "rows", "dim", "how"}) of the embedding table the encoder builds, features of
        equal keys sharing one (``config.embedding_tables``), or None. ``by_name``: the spec's features;
        ``vocab_size(source)``: a vocabulary's size computed from the data, if known."""
        return None


def _lookup_table(f, by_name, vocab_size):
    """``Feature.embedding_table`` of a looked-up feature (categorical, sequence): keyed by (vocabulary
    source if shared, else the feature; dim), rows of the hash buckets or the vocabulary + OOV rows.
    Without ``vocab_size`` (at config load) a computed vocabulary counts ``max_vocab`` + OOV rows where
    ``max_vocab`` is set (the most it may hold), else one value + OOV rows (the least)."""
    key = f.lookup_key
    if f.hash_buckets:
        rows, how = f.hash_buckets, "hash_buckets"
    else:
        src = by_name.get(f.vocab_source, f)
        if src.vocabulary:
            rows, how = len(src.vocabulary) + src.num_oov, "vocabulary + num_oov"
        elif vocab_size is not None:
            rows, how = vocab_size(f.vocab_source) + src.num_oov, "the training vocabulary + num_oov"
        elif src.max_vocab is not None:
            rows, how = src.max_vocab + src.num_oov, "up to max_vocab + num_oov"
        else:
            rows, how = 1 + src.num_oov, "at least one value + num_oov"
    return key, {"feature": key[0], "rows": rows, "dim": f.embedding_dim, "how": how}


class _LookedUp:
    """What the looked-up types (categorical, ID, sequence) share: a vocabulary or hashing -> an
    embedding table, shared by the features that name the same vocabulary source."""

    @property
    def lookup_key(self) -> Tuple[str, int]:
        """(vocabulary source if its table is shared, else the feature's name; embedding_dim): the
        features of one key share one embedding table."""
        source = self.vocab_source
        shared = source is not None and self.share_embedding
        return (source if shared else self.name, self.embedding_dim)


@dataclasses.dataclass
class CategoricalFeature(_LookedUp, Feature):
    """Profile or attribute: string lookup (vocabulary from the training logs) or hashing -> embedding.

    Defaults: ``num_oov=1`` sends every unseen value to one bucket; ``min_count=1`` keeps every value
    seen in training. ``multivalued`` fields (e.g. genres) are mean-pooled over their values.
    ``oov_rate``: in training, this share of the values (drawn per lookup) is looked up as the OOV row,
    so that the OOV row and the tower's other features learn to stand for a value never seen: a new
    item of a catalog refresh is then placed by its genres, title, ... (cold start). 0 by default: with
    min_count 1 no value of the training logs reaches the OOV row otherwise, which stays random.
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
    oov_rate: float = 0.0

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
        if not 0.0 <= self.oov_rate < 1.0 or (self.oov_rate and (self.hash_buckets or not self.num_oov)):
            raise ValueError(f"feature '{self.name}': oov_rate must be in [0, 1) and needs a vocabulary with "
                             f"num_oov >= 1, got {self.oov_rate}")

    @property
    def vocab_source(self) -> Optional[str]:
        return None if self.hash_buckets else self.name

    def encoder(self, factory):
        return factory.categorical(self)

    def embedding_table(self, by_name, vocab_size=None):
        return _lookup_table(self, by_name, vocab_size) if self.tower_input else None


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
            raise ValueError(f"feature '{self.name}': impute must be null or 'mean', got {quote(self.impute)}")
        if self.default is not None:
            self.default = int(self.default) if self.dtype == "int64" else float(self.default)

    @property
    def input_dtype(self):
        return tf.float32

    def encoder(self, factory):
        return factory.numeric(self)

    @property
    def counts_moments(self) -> bool:
        return self.normalize

    @property
    def finite_required(self) -> bool:
        """Whether a NaN or inf value is an error (no ``impute``): the input pipeline checks for them."""
        return self.impute is None

    @property
    def encoding_width(self) -> int:
        return 1


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
            raise ValueError(f"feature '{self.name}': buckets must be among {sorted(self.BUCKET_SIZES)}, got {quote(unknown)}")

    @property
    def input_dtype(self):
        return tf.int64

    def encoder(self, factory):
        return factory.timestamp(self)

    @property
    def encoding_width(self) -> int:
        return self.embedding_dim * len(self.buckets)

    def embedding_table(self, by_name, vocab_size=None):
        rows = sum(self.BUCKET_SIZES[b] for b in self.buckets)
        return (self.name,), {"feature": self.name, "rows": rows, "dim": self.embedding_dim, "how": "calendar buckets"}


@dataclasses.dataclass
class SequenceFeature(_LookedUp, Feature):
    """Behaviour history: variable-length list of IDs, most recent last; empty lists are valid.

    Only the last ``max_len`` values are kept. ``vocab_from`` names an ID feature (e.g. item_id)
    whose vocabulary is reused and, with ``share_embedding`` (default), its embedding table too, so
    history items and candidates live in one space. Pooling: mean, sum or attention (additive
    attention with a learned query, masked).

    ``gradient_share`` p (mean/sum pooling): in training, the table learns from each history item with
    probability p, with weight 1/p: pool = sum_l e_l / n + sum_{l kept} (e_l - sg(e_l)) / (p n), the same
    value, an unbiased estimate of the full gradient through about p x the rows. The table's update
    (gathers, deduplication, optimizer) scales with the rows a batch sends it, and a batch of 1,024
    users x 50 history items sends 51k. Default 1.0 (every item: the exact gradient): on Gowalla valid,
    ``cf`` with 0.2 stepped 1.7x faster but lost 3.9% Recall@20 (``benchmarks/README.md``). With it, an
    ``l2`` on the shared table penalises the kept history rows only.
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
    gradient_share: float = 1.0

    POOLINGS: ClassVar[Tuple[str, ...]] = ("mean", "sum", "attention")
    multivalued: ClassVar[bool] = True

    def __post_init__(self):
        if self.pooling not in self.POOLINGS:
            raise ValueError(f"feature '{self.name}': pooling must be one of {self.POOLINGS}, got {quote(self.pooling)}")
        if self.max_len <= 0:
            raise ValueError(f"feature '{self.name}': max_len must be positive")
        if isinstance(self.gradient_share, bool) or not isinstance(self.gradient_share, (int, float)) \
                or not 0 < self.gradient_share <= 1:
            raise ValueError(f"feature '{self.name}': gradient_share must be a number in (0, 1], "
                             f"got {quote(self.gradient_share)}")
        if self.gradient_share < 1 and self.pooling == "attention":
            raise ValueError(f"feature '{self.name}': gradient_share < 1 needs mean or sum pooling (attention "
                             "weights are not a fixed 1/n)")
        self.gradient_share = float(self.gradient_share)

    @property
    def vocab_source(self) -> Optional[str]:
        if self.hash_buckets:
            return None
        return self.vocab_from or self.name

    def cut(self, parsed):
        """The last ``max_len`` values of each row of a parsed (ragged) batch: what the encoder keeps,
        taken before anything dense is built, so that one record of 10^6 values costs what ``max_len``
        allows (a dense [batch, longest row] tensor would cost batch x 10^6). Dense input passes."""
        return parsed[:, -self.max_len:] if isinstance(parsed, tf.RaggedTensor) else parsed

    def prepare(self, parsed):
        return super().prepare(self.cut(parsed))

    def encoder(self, factory):
        return factory.sequence(self)

    def embedding_table(self, by_name, vocab_size=None):
        return _lookup_table(self, by_name, vocab_size)


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
            raise ValueError(f"feature '{self.name}': combiner must be one of {self.COMBINERS}, got {quote(self.combiner)}")
        if self.num_buckets <= 0 or self.embedding_dim <= 0:
            raise ValueError(f"feature '{self.name}': num_buckets and embedding_dim must be positive")

    def encoder(self, factory):
        return factory.text(self)

    @property
    def idf_buckets(self) -> int:
        return self.num_buckets if self.combiner == "tfidf" else 0

    def embedding_table(self, by_name, vocab_size=None):
        return (self.name,), {"feature": self.name, "rows": self.num_buckets, "dim": self.embedding_dim,
                              "how": "num_buckets"}


FEATURE_TYPES = {cls.type: cls for cls in (IdFeature, CategoricalFeature, NumericFeature, TimestampFeature,
                                            SequenceFeature, TextFeature)}


def feature_from_dict(d: Dict[str, Any]) -> Feature:
    """A feature from its mapping, every option's type checked (naming feature and option)."""
    if not isinstance(d, dict):
        raise ValueError(f"a feature is a mapping with 'name' and 'type', got {quote(d)}")
    d = dict(d)
    if "name" not in d or "type" not in d:
        raise ValueError(f"each feature needs 'name' and 'type', got {quote(d)}")
    name = check_type("feature name", d["name"], str)
    kind = d.pop("type")
    if not isinstance(kind, str) or kind not in FEATURE_TYPES:
        raise ValueError(f"feature '{name}': unknown type {quote(kind)}; known: {sorted(FEATURE_TYPES)}")
    cls = FEATURE_TYPES[kind]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in d if k not in allowed), key=str)
    if unknown:
        raise ValueError(f"feature '{name}' ({kind}): unknown option(s) {quote(unknown)}; allowed: {sorted(allowed)}")
    hints = typing.get_type_hints(cls)
    for option, value in d.items():
        where = f"feature '{name}' ({kind}): {option}"
        if option == "default":  # the field's raw dtype decides: a string, an integer or a number
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
                raise ValueError(f"{where}: expected a string or a number, got {quote(value)}")
        else:
            d[option] = check_type(where, value, hints[option])
    return cls(**d)


@dataclasses.dataclass
class FeatureSpec:
    """Query-side and candidate-side features, plus which candidate feature is the item ID.

    Example (``features:`` of a config, as a dict; ``FeatureSpec.load(path)`` reads a YAML or JSON file):

    >>> from tfrec_towers.features.spec import FeatureSpec
    >>> spec = FeatureSpec.from_dict({"query": [{"name": "user_id", "type": "id"}],
    ...                               "candidate": [{"name": "item_id", "type": "id", "embedding_dim": 16}]})
    >>> [f.name for f in spec.features], spec.by_name["item_id"].embedding_dim
    (['user_id', 'item_id'], 16)
    """

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
                raise ValueError(f"feature '{f.name}': dtype must be one of {sorted(_DTYPES)}, got {quote(f.dtype)}")
            src = f.vocab_from
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

    def cut_sequences(self, parsed: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """A parsed batch with each sequence feature cut to its last ``max_len`` values (``SequenceFeature.cut``)."""
        by_name = self.by_name
        return {k: by_name[k].cut(v) if k in by_name else v for k, v in parsed.items()}

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
        if not isinstance(d, dict):
            raise ValueError(f"feature spec: expected a mapping (query, candidate, item_id), got {quote(d)}")
        unknown = sorted((k for k in d if k not in ("query", "candidate", "item_id")), key=str)
        if unknown:
            raise ValueError(f"feature spec: unknown key(s) {quote(unknown)}; expected query, candidate, item_id")
        sides = {side: check_type(f"feature spec: {side}", d.get(side) or [], List[Any]) for side in SIDES}
        return cls(query=[feature_from_dict(f) for f in sides["query"]],
                   candidate=[feature_from_dict(f) for f in sides["candidate"]],
                   item_id=check_type("feature spec: item_id", d.get("item_id", "item_id"), str))

    @classmethod
    def load(cls, path: str) -> "FeatureSpec":
        return cls.from_dict(load_mapping(path))


def select(parsed: Dict, mask: tf.Tensor) -> Dict:
    """The rows of a parsed batch (dense or ragged features) where ``mask`` is true.

    A gather of the selected rows, costing what they hold: ``tf.ragged.boolean_mask`` with a [batch]
    mask builds a [batch, longest row] dense mask, 4 GB for one record of 10^6 values in a batch of 4096.
    """
    rows = tf.where(mask)[:, 0]
    return {k: tf.gather(v, rows) for k, v in parsed.items()}


def load_mapping(path: str) -> Dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON file -> dict.

    Refused with a ValueError naming the file: invalid YAML/JSON, a document nested deeper than
    ``MAX_DEPTH`` levels, YAML whose aliases expand it by more than ``MAX_ALIAS_EXPANSION`` nodes
    (``_ConfigLoader``), a top level that is not a mapping.
    """
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f) if path.endswith(".json") else load_yaml(f)
        except RecursionError:  # json's decoder recurses once per level
            raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as e:  # json.JSONDecodeError and load_yaml's errors are ValueErrors
            raise ValueError(f"{path}: {e}") from None
    if _depth(data) > MAX_DEPTH:
        raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {quote(data)}")
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
