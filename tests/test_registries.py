"""One registry per choice (issue 27): every name the config, the CLI and the errors offer comes from its
registry (``tfrec_towers.choices`` reads the names from the registries' sources), and every registered
name builds; every checked config option is a field of its section; every feature type parses, encodes
and counts its statistics."""
import argparse
import dataclasses
import typing

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers import choices
from tfrec_towers.config import SECTIONS, Config, packaged


def checked_options():
    """{"section.key": field metadata} of every option the config checks (choices or range), walking the
    nested sections; each is a field of its dataclass by construction (the check is on the field)."""
    out = {}

    def walk(where, cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "choices" in f.metadata or "range" in f.metadata:
                out[f"{where}.{f.name}"] = (cls, f)
            hint = hints[f.name]
            nested = [hint] if dataclasses.is_dataclass(hint) else [a for a in typing.get_args(hint)
                                                                    if dataclasses.is_dataclass(a)]
            for section in nested:
                walk(f"{where}.{f.name}", section)

    for key, section in SECTIONS.items():
        walk(key, section)
    return out


def test_every_checked_option_is_a_field_whose_default_passes_its_check():
    options = checked_options()
    assert len(options) == 67  # the 65 CHOICES / RANGES entries of before issue 27, each now on its field, + train.steps_per_execution, train.svd_init
    for key, (cls, f) in options.items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if "choices" in f.metadata:
            assert f.metadata["choices"] and default in f.metadata["choices"], key
        else:
            text, ok = f.metadata["range"]
            assert all(ok(v) for v in (default if isinstance(default, list) else [default]) if v is not None), key


def test_a_value_outside_its_choices_is_refused_naming_the_key():
    base = Config.load(packaged("default")).to_dict()
    for key, (cls, f) in checked_options().items():
        if "choices" not in f.metadata:
            continue
        d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
        *path, name = key.split(".")
        node = d
        for part in path:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[name] = "no-such-choice"
        with pytest.raises(ValueError, match=rf"config {'.'.join(path)}\.{name}: must be one of "):
            Config.from_dict(d)


def test_the_config_offers_the_registries_names():
    options = checked_options()
    offered = {key: f.metadata["choices"] for key, (_, f) in options.items() if "choices" in f.metadata}
    assert offered["task.loss"] == choices.LOSSES
    assert offered["task.loss_reduction"] == choices.REDUCTIONS
    assert offered["train.optimizer"] == choices.OPTIMIZERS == tuple(choices.OPTIMIZER_SLOTS)
    assert offered["train.strategy"] == choices.STRATEGIES
    assert offered["data.corrupt_records"] == choices.RECORD_POLICIES
    assert offered["data.compression"] == choices.COMPRESSIONS
    assert offered["model.sharing"] == choices.SHARING


def test_the_names_read_from_the_sources_are_the_imported_registries():
    from tfrec_towers import lazy_adam, train
    from tfrec_towers.data import reader, user_item_lists
    from tfrec_towers.export import indexes
    from tfrec_towers.tasks import losses, reduction

    assert tuple(losses.LOSSES) == choices.LOSSES
    assert tuple(n for n, kind in losses.LOSSES.items() if kind.pointwise) == choices.POINTWISE_LOSSES
    assert tuple(reduction.REDUCTIONS) == choices.REDUCTIONS
    assert tuple(lazy_adam.OPTIMIZERS) == choices.OPTIMIZERS
    assert lazy_adam.OPTIMIZER_SLOTS == choices.OPTIMIZER_SLOTS
    assert tuple(train.STRATEGIES) == choices.STRATEGIES
    assert tuple(indexes.INDEXES) == choices.INDEX_TYPES
    assert all(cls.kind == kind for kind, cls in indexes.INDEXES.items())
    assert reader.POLICIES == user_item_lists.POLICIES == choices.RECORD_POLICIES


def test_the_names_load_nothing_of_the_package_but_themselves():
    import subprocess
    import sys

    code = ("import sys, tfrec_towers.choices; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow loaded'; "
            "loaded = sorted(m for m in sys.modules if m.startswith('tfrec_towers')); "
            "assert loaded == ['tfrec_towers', 'tfrec_towers.choices'], loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("source, error", [
    ("X = {'a': 1, 'b': 2}\n", None),
    ("X = dict(a=1)\n", r"X must be assigned once at module level, a dict literal with string keys"),
    ("X = {k: 1 for k in 'ab'}\n", "a dict literal"),
    ("X = {A: 1}\n", "a dict literal"),
    ("X = {'a': 1, **Y}\n", "a dict literal"),
    ("Y = {'a': 1}\n", "assigned once"),
    ("X = {'a': 1}\nX = {'b': 1}\n", "assigned once"),
    ("X = {'a': 1, 'b': N}\n", r"X\['b'\]: must be an int literal"),
])
def test_the_source_reader_refuses_what_it_cannot_read(tmp_path, source, error):
    path = tmp_path / "registry.py"
    path.write_text(source)
    if error is None:
        assert choices.read_registry(str(path), "X", choices._count) == {"a": 1, "b": 2}
        return
    with pytest.raises(RuntimeError, match=error) as raised:
        choices.read_registry(str(path), "X", choices._count)
    assert str(path) in str(raised.value)


def test_a_pointwise_flag_must_be_a_literal(tmp_path):
    path = tmp_path / "losses.py"
    path.write_text("LOSSES = {'a': LossKind(f), 'b': LossKind(g, pointwise=True), 'c': LossKind(h, pointwise=P)}\n")
    with pytest.raises(RuntimeError, match=r"LOSSES\['c'\]: malformed node"):
        choices.read_registry(str(path), "LOSSES", choices._pointwise)
    path.write_text("LOSSES = {'a': LossKind(f), 'b': LossKind(g, pointwise=True), 'c': KINDS['c']}\n")
    with pytest.raises(RuntimeError, match=r"LOSSES\['c'\]: must be a LossKind\(...\) call"):
        choices.read_registry(str(path), "LOSSES", choices._pointwise)
    path.write_text("LOSSES = {'a': LossKind(f), 'b': LossKind(g, pointwise=True)}\n")
    assert choices.read_registry(str(path), "LOSSES", choices._pointwise) == {"a": False, "b": True}


def test_the_cli_offers_the_registries_names():
    from tfrec_towers.cli import build_parser

    offered = {}

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            elif action.choices is not None:
                for option in action.option_strings:
                    offered.setdefault(option, set()).add(tuple(action.choices))

    walk(build_parser())
    assert offered["--index"] == {choices.INDEX_TYPES}
    assert offered["--policy"] == {choices.RECORD_POLICIES}


def test_the_cli_and_the_names_load_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys; import tfrec_towers.cli, tfrec_towers.choices, tfrec_towers.export.layout; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow loaded'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# --- every registered name builds ---------------------------------------------------------------

@pytest.mark.parametrize("reduction", choices.REDUCTIONS)
@pytest.mark.parametrize("loss", choices.LOSSES)
def test_every_loss_builds_and_gives_a_finite_loss(loss, reduction):
    from tfrec_towers.model import build_task, make_loss

    config = Config.load(packaged("default"))
    config.task.loss, config.task.loss_reduction = loss, reduction
    if loss == "ccl":  # reads cosines
        config.task.temperature, config.task.logq = None, False
    assert make_loss(config) is not None
    task = build_task(config)
    rng = np.random.default_rng(0)
    query = tf.math.l2_normalize(tf.constant(rng.normal(size=(4, 8)), tf.float32), -1)
    items = tf.math.l2_normalize(tf.constant(rng.normal(size=(4, 8)), tf.float32), -1)
    value = task(query, items, candidate_ids=tf.constant(["a", "b", "c", "d"]),
                 labels=tf.constant([1.0, 0.0, 1.0, 1.0]))
    assert np.isfinite(float(value))


def test_an_unknown_loss_is_refused_listing_the_known():
    from tfrec_towers.model import make_loss

    config = Config.load(packaged("default"))
    config.task.loss = "nope"  # past the config's own check
    with pytest.raises(ValueError, match=r"task.loss must be one of \('softmax', 'hinge'"):
        make_loss(config)


def test_ccl_still_refuses_temperature_and_logq():
    from tfrec_towers.model import make_loss

    config = Config.load(packaged("default")).with_overrides(["task.loss=ccl"])
    with pytest.raises(ValueError, match="task.loss ccl reads cosines"):
        make_loss(config)


@pytest.mark.parametrize("name", choices.OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name):
    from tfrec_towers.model import make_optimizer

    variable = tf.Variable(tf.ones([3, 2]))
    optimizer = make_optimizer(name, 0.1)
    optimizer.apply_gradients([(tf.ones([3, 2]), variable)])
    assert np.all(variable.numpy() < 1.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("nope", 0.1)


@pytest.mark.parametrize("name", choices.STRATEGIES)
def test_every_strategy_builds(name, monkeypatch):
    from tfrec_towers.train import make_strategy

    if name == "multi_worker":  # a cluster from TF_CONFIG: without one, the error says so
        monkeypatch.delenv("TF_CONFIG", raising=False)
        with pytest.raises(ValueError, match="strategy multi_worker reads the cluster from TF_CONFIG"):
            make_strategy(name)
        return
    assert isinstance(make_strategy(name), tf.distribute.Strategy)


def test_an_unknown_strategy_is_refused_listing_the_known():
    from tfrec_towers.train import make_strategy

    with pytest.raises(ValueError, match=r"strategy must be one of \('default', 'mirrored', 'multi_worker'\)"):
        make_strategy("nope")


@pytest.mark.parametrize("kind", choices.INDEX_TYPES)
def test_every_index_type_builds_on_a_tiny_catalog(kind):
    if kind == "scann":
        pytest.importorskip("scann")
    from tfrec_towers.export.indexes import build_index

    rng = np.random.default_rng(0)
    ids = np.array([f"i{n}" for n in range(40)])
    embeddings = rng.normal(size=(40, 8)).astype(np.float32)
    index = build_index(kind, ids, embeddings, k=5)
    scores, found = index(tf.constant(embeddings[:2]))
    assert scores.shape == (2, 5) and found.shape == (2, 5)


@pytest.mark.parametrize("policy", choices.RECORD_POLICIES)
def test_every_record_policy_is_accepted_and_others_refused(policy):
    from tfrec_towers.data import reader

    assert reader.check_policy(policy) == policy
    with pytest.raises(ValueError, match=r"corrupt-record policy must be one of \('fail', 'skip'\)"):
        reader.check_policy("ignore")


# --- every feature type parses, encodes and counts its statistics ----------------------------------

#: One value and the options of a feature of each type (a new type needs its line here).
FEATURE_SAMPLES = {
    "id": ({}, b"u1"),
    "categorical": ({"multivalued": True}, [b"a", b"b"]),
    "numeric": ({}, 2.5),
    "timestamp": ({"buckets": ["hour", "dow", "hour_of_week"]}, 1_700_000_000),
    "sequence": ({"max_len": 3}, [b"i1", b"i2", b"i1", b"i3"]),
    "text": ({"combiner": "tfidf", "num_buckets": 64, "embedding_dim": 4}, b"good morning"),
}


def _example(values):
    feature = {}
    for name, value in values.items():
        value = value if isinstance(value, list) else [value]
        if isinstance(value[0], bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=value))
        elif isinstance(value[0], float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_every_feature_type_has_a_sample():
    from tfrec_towers.features.spec import FEATURE_TYPES

    assert set(FEATURE_SAMPLES) == set(FEATURE_TYPES)


@pytest.mark.parametrize("kind", sorted(FEATURE_SAMPLES))
def test_every_feature_type_parses_encodes_and_counts_stats(kind):
    from tfrec_towers.config import embedding_tables
    from tfrec_towers.features.encoders import EncoderFactory
    from tfrec_towers.features.spec import FEATURE_TYPES, FeatureSpec
    from tfrec_towers.features.stats import StatsAccumulator

    options, value = FEATURE_SAMPLES[kind]
    spec = FeatureSpec.from_dict({"query": [{"name": "f", "type": kind, **options}],
                                  "candidate": [{"name": "item_id", "type": "id"}]})
    feature = spec.by_name["f"]
    assert type(feature) is FEATURE_TYPES[kind] and feature.type == kind
    parsed = tf.io.parse_example(tf.constant([_example({"f": value, "item_id": b"i1"})]), spec.parse_spec())
    acc = StatsAccumulator(spec)
    acc(spec.cut_sequences(parsed))
    stats = acc.result()
    assert stats.num_examples == 1
    if feature.vocab_source:
        assert stats.vocabulary(feature.vocab_source)
    if feature.counts_moments:
        assert stats.numeric("f") == (2.5, 0.0)
    if feature.idf_buckets:
        assert stats.idf(feature.idf_buckets).shape == (feature.idf_buckets,)
    encoder = EncoderFactory(spec, stats).build(feature)
    encoded = encoder(spec.prepare(parsed)["f"])
    assert encoded.shape == (1, feature.encoding_width) and np.all(np.isfinite(encoded.numpy()))
    tables = embedding_tables(spec)
    assert sum(t["feature"] == "f" or t["feature"] == feature.vocab_source for t in tables) == (kind != "numeric")


# --- the documentation's lists name the registered names -----------------------------------------

def test_the_readmes_lists_name_exactly_the_registered_names():
    import glob
    import os
    import re

    # README.md (the command table: --index, --policy) and docs/*.md (the guide: task.loss, train.strategy;
    # moved there from the README by issue 27)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = ""
    for path in [os.path.join(repo, "README.md")] + sorted(glob.glob(os.path.join(repo, "docs", "*.md"))):
        with open(path, encoding="utf-8") as f:
            readme += f.read() + "\n"

    def listed(option):  # every "OPTION a\|b\|c" list of the README and docs/, as sets
        return [set(m.split("\\|")) for m in re.findall(re.escape(option) + r"[ :]+([a-z_]+(?:\\\|[a-z_]+)+)", readme)]

    assert listed("--index") and all(names == set(choices.INDEX_TYPES) for names in listed("--index"))
    assert listed("--policy") and all(names == set(choices.RECORD_POLICIES) for names in listed("--policy"))
    documented = set(re.findall(r"task\.loss: ([a-z_]+)", readme)) | set().union(*listed("task.loss"))
    assert documented == set(choices.LOSSES) - {"softmax"}  # softmax: the default, the README's baseline
    strategies = re.search(r"`train\.strategy` from the config \(([^)]*)\)", readme).group(1)
    assert set(re.findall(r"`([a-z_]+)`", strategies)) == set(choices.STRATEGIES)
