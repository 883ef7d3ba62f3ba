"""Issue 23: inputs a user can hand the package never segfault, exhaust memory or end in a traceback.

Real TFRecord files, config files and run directories in temp dirs; whatever could crash runs as a
``tfrec-towers`` subprocess whose exit status, stderr and peak memory are checked.
"""
import os
import struct
import subprocess
import tempfile
import time

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import pytest
import tensorflow as tf
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_masked_crc32c

from cli_helpers import cli, subprocess_env
from tfrec_towers.record_crc import masked_crc32c
from tfrec_towers.data import reader
from tfrec_towers.data.writer import write_tfrecords

KINDS = {"user_id": "bytes", "item_id": "bytes", "item_history": "bytes", "label": "int64", "bio": "bytes"}

CONFIG = """\
features:
  item_id: item_id
  query:
    - {name: user_id, type: id, embedding_dim: 8}
    - {name: item_history, type: sequence, vocab_from: item_id, max_len: 5, embedding_dim: 8}
  candidate:
    - {name: item_id, type: id, embedding_dim: 8}
data: {shuffle_buffer: 100}
model: {hidden: [], output_dim: 8}
task: {batch_recall_k: []}
train: {batch_size: 32, epochs: 1}
eval: {batch_size: 64, ks: [1, 10]}
"""


def rows(n, start=0, long_history=None):
    """n small events; ``long_history``: (row, length) of one event whose history holds that many values."""
    out = [{"user_id": f"u{i % 20}", "item_id": f"i{i % 30}", "label": int(i % 3 > 0), "bio": f"user {i % 20}",
            "item_history": [f"i{(i + j) % 30}" for j in range(i % 4)]} for i in range(start, start + n)]
    if long_history:
        row, length = long_history
        out[row]["item_history"] = [f"i{j % 30}" for j in range(length)]
    return out


def write_log(path_prefix, events, compression=""):
    return write_tfrecords(events, str(path_prefix), 1, compression=compression, kinds=KINDS)[0]


def config_file(tmp_path, text=CONFIG, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def peak_rss_mb(pid):
    """VmHWM of a live process in MB (0 once it is a zombie). wait4's ru_maxrss is not used: Linux
    carries the forking parent's resident size into the child's count, so under a pytest process that
    has grown to 2 GB every child would report at least 2 GB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_cli(*args, timeout=240):
    """``tfrec-towers ARGS`` -> (exit status, stdout, stderr); ``run_cli.peak_mb``: the child's peak
    resident memory (its VmHWM, read every 20 ms while it runs), ``run_cli.seconds``: its wall time."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.monotonic()
        proc = subprocess.Popen(cli(*args), env=subprocess_env(), stdout=out, stderr=err, text=True)
        peak = 0.0
        while True:
            peak = max(peak, peak_rss_mb(proc.pid))
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                err.seek(0)
                raise AssertionError(f"tfrec-towers {args[0]} still ran after {timeout}s:\n{err.read()[-3000:]}")
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        run_cli.seconds, run_cli.peak_mb = time.monotonic() - start, peak
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read()


def error_line(stderr):
    """The CLI's one error line (TensorFlow's import noise aside)."""
    lines = [line for line in stderr.splitlines() if line.startswith("tfrec-towers ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def assert_clean_exit_2(code, stderr, *expected):
    assert code == 2, f"exit {code}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    line = error_line(stderr)
    for text in expected:
        assert text in line, line
    return line


# --- case 2: a frame header declaring more bytes than the file holds ------------------------------

def damaged_header(length, crc_ok=True):
    """A TFRecord frame header (uint64 length, uint32 masked CRC-32C of it) and a little data."""
    head = struct.pack("<Q", length)
    crc = reference_masked_crc32c(head) ^ (0 if crc_ok else 1)
    return head + struct.pack("<I", crc) + b"x" * 100


def append(path, data):
    with open(path, "ab") as f:
        f.write(data)


def test_masked_crc32c_matches_tensorflow_framing():
    for data in (b"", b"\x00" * 8, struct.pack("<Q", 2 ** 40), bytes(range(256))):
        assert masked_crc32c(data) == reference_masked_crc32c(data)


@pytest.mark.parametrize("length", [2 ** 30, 2 ** 63, 2 ** 64 - 1])  # 2^40: in a subprocess below
def test_scan_names_a_frame_declaring_more_than_the_file_holds(tmp_path, length):
    """Only the headers are read: TensorFlow never sees the damaged frame (it allocates the declared length)."""
    path = write_log(tmp_path / "damaged", rows(25))
    append(path, damaged_header(length))
    intact = write_log(tmp_path / "intact", rows(5, start=100))
    spec = {"user_id": tf.io.FixedLenFeature([], tf.string)}
    with pytest.raises(reader.CorruptRecordError) as err:
        reader.scan([path, intact], spec, policy="fail")
    assert (err.value.path, err.value.record) == (path, 25)
    assert f"declares {length} bytes" in str(err.value)
    report = reader.scan([path, intact], spec, policy="skip")
    assert report.records == 30 and [(p, r) for p, r, _ in report.skipped] == [(path, 25)]
    batches = reader.make_dataset([path, intact], spec, lambda x: x, 8, policy="skip")
    assert sum(len(b["user_id"]) for b in batches) == 30
    with pytest.raises(reader.CorruptRecordError, match="record 25"):
        reader.make_dataset([path, intact], spec, lambda x: x, 8, policy="fail")
    assert reader.check_schema([path], spec) == 20  # the first records are checked; the scan reports the rest


def test_scan_names_a_frame_whose_length_crc_fails(tmp_path):
    path = write_log(tmp_path / "damaged", rows(4))
    append(path, damaged_header(50, crc_ok=False))
    with pytest.raises(reader.CorruptRecordError, match="record 4: damaged frame: the length header fails its CRC"):
        reader.scan([path], {"user_id": tf.io.FixedLenFeature([], tf.string)})
    # A file damaged from its first record: nothing to check the spec against.
    first = str(tmp_path / "first.tfrecord")
    append(first, damaged_header(2 ** 40))
    with pytest.raises(ValueError, match="(?s)no readable record.*record 0: damaged frame"):
        reader.check_schema([first], {"user_id": tf.io.FixedLenFeature([], tf.string)})


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_train_on_a_frame_declaring_2_to_the_40_bytes(tmp_path, policy):
    """Issue 23.2: ``train`` segfaulted (exit -11) under both policies."""
    logs = tmp_path / "logs"
    logs.mkdir()
    damaged = write_log(logs / "a", rows(30))
    append(damaged, damaged_header(2 ** 40))
    early = write_log(logs / "b", rows(3, start=30))  # damaged within the schema check's first 20 records
    append(early, damaged_header(2 ** 40))
    write_log(logs / "c", rows(40, start=50))
    run_dir = tmp_path / "run"
    code, out, err = run_cli("train", "--config", config_file(tmp_path), "--train", logs / "*.tfrecord",
                             "--run-dir", run_dir, "--set", f"data.corrupt_records={policy}")
    if policy == "fail":
        assert_clean_exit_2(code, err, f"{damaged}: record 30: damaged frame",
                            f"declares {2 ** 40} bytes")
        assert not os.path.exists(run_dir / "run.json")
    else:
        assert code == 0, err[-3000:]
        assert "read 73 records from 3 file(s); skipped 2 corrupt record(s)" in out
        assert f"{damaged}: record 30: damaged frame" in out and f"{early}: record 3: damaged frame" in out
        assert os.path.exists(run_dir / "weights" / "final.index")


# --- case 3: sizes that exhaust memory -------------------------------------------------------------

def test_long_history_costs_what_max_len_allows(tmp_path):
    """Issue 23.3: one record whose history holds 10^6 values made the stats pass build a [batch, 10^6]
    mask (tf.ragged.boolean_mask) and the input pipeline [batch, 10^6] dense tensors: here 2.7 GB at
    peak instead of 0.7 GB. Sequences are now cut to max_len (5) before anything dense is built."""
    peaks = {}
    for name, long_history in (("plain", None), ("long", (7, 10 ** 6))):
        logs = tmp_path / name
        logs.mkdir()
        write_log(logs / "part", rows(200, long_history=long_history))
        code, out, err = run_cli("train", "--config", config_file(tmp_path), "--train", logs / "*.tfrecord",
                                 "--run-dir", tmp_path / f"run-{name}", "--set", "data.label=label")
        assert code == 0, err[-3000:]
        assert "read 200 records" in out
        peaks[name] = run_cli.peak_mb
    assert peaks["long"] - peaks["plain"] < 400, peaks


def test_sequences_are_cut_to_max_len_before_anything_dense():
    from tfrec_towers.features.spec import FeatureSpec

    spec = FeatureSpec.from_dict(yaml_config()["features"])
    history = tf.ragged.constant([[b"a", b"b"], [b"x%d" % i for i in range(100_000)], []])
    prepared = spec.by_name["item_history"].prepare(history)
    assert prepared.shape == (3, 5)
    assert prepared.numpy()[1].tolist() == [b"x%d" % i for i in range(99_995, 100_000)]
    assert prepared.numpy()[0].tolist() == [b"a", b"b", b"", b"", b""]
    kept = reader.select({"h": history, "n": tf.constant([1, 2, 3])}, tf.constant([False, True, True]))
    assert kept["h"].row_lengths().numpy().tolist() == [100_000, 0] and kept["n"].numpy().tolist() == [2, 3]


def yaml_config(text=CONFIG):
    import yaml

    return yaml.safe_load(text)


def test_shuffle_buffer_of_10_to_the_12_is_refused_at_load(tmp_path):
    """Issue 23.3: data.shuffle_buffer 10^12 segfaulted (TensorFlow asked for 24 TB of buffer slots)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    write_log(logs / "part", rows(50))
    code, _, err = run_cli("train", "--config", config_file(tmp_path), "--train", logs / "*.tfrecord",
                           "--run-dir", tmp_path / "run", "--set", f"data.shuffle_buffer={10 ** 12}")
    assert_clean_exit_2(code, err, "data.shuffle_buffer", f"{10 ** 12} slots need")
    assert not os.path.exists(tmp_path / "run")


def test_batch_size_beyond_the_data_trains_as_one_batch(tmp_path):
    """Issue 23.3: train.batch_size 10^12 hung in fit (the label filter's re-batching allocated slots for
    10^12 rows; 10^8 took 10 GB). A batch is never larger than the training records, so the pipeline
    is given at most that many: the same single batch, in seconds."""
    logs = tmp_path / "logs"
    logs.mkdir()
    write_log(logs / "part", rows(200))
    code, out, err = run_cli("train", "--config", config_file(tmp_path), "--train", logs / "*.tfrecord",
                             "--run-dir", tmp_path / "run", "--set", "data.label=label",
                             "--set", f"train.batch_size={10 ** 12}", timeout=150)
    assert code == 0, err[-3000:]
    assert "1/1" in out and os.path.exists(tmp_path / "run" / "weights" / "final.index")


def test_sizes_known_after_the_stats_pass_are_checked_against_memory():
    from tfrec_towers.config import Config, check_sizes

    config = Config.from_dict(yaml_config())
    config.train.batch_size = 65536
    check_sizes(config, examples=100, budget=10 ** 9)  # batches of at most the 100 examples: small
    with pytest.raises(ValueError, match=r"train.batch_size: a batch of 65536 examples .* 65536 x 65536 floats"):
        check_sizes(config, examples=10 ** 6, budget=10 ** 9)
    config.data.shuffle_buffer = 10 ** 7
    with pytest.raises(ValueError, match=r"data.shuffle_buffer: 10000000 records of 1000 bytes"):
        check_sizes(config, records=10 ** 8, data_bytes=10 ** 11, budget=10 ** 9)


# --- case 4: model sizes that cannot fit ------------------------------------------------------------

HUGE = {
    "embedding_dim": ("{name: user_id, type: id, embedding_dim: 1000000000000}",
                      "feature 'user_id': embedding table of 2 x 1000000000000 floats"),
    "hash_buckets": ("{name: user_id, type: id, embedding_dim: 8, hash_buckets: 1099511627776}",
                     "feature 'user_id': embedding table of 1099511627776 x 8 floats (hash_buckets)"),
    "num_buckets": ("{name: user_id, type: id, embedding_dim: 8}\n    - {name: bio, type: text, num_buckets: 1099511627776}",
                    "feature 'bio': embedding table of 1099511627776 x 32 floats (num_buckets)"),
}


@pytest.mark.parametrize("what", sorted(HUGE))
def test_absurd_model_sizes_fail_at_config_load(tmp_path, what):
    """Issue 23.4: they ran the whole stats pass, wrote run.json, then ended in ResourceExhaustedError."""
    feature, message = HUGE[what]
    text = CONFIG.replace("{name: user_id, type: id, embedding_dim: 8}", feature)
    logs = tmp_path / "logs"
    logs.mkdir()
    write_log(logs / "part", rows(50))
    code, out, err = run_cli("train", "--config", config_file(tmp_path, text), "--train", logs / "*.tfrecord",
                             "--run-dir", tmp_path / "run")
    line = assert_clean_exit_2(code, err, message, "GB of memory of this machine")
    assert "scanned" not in out  # before the data pass
    assert not os.path.exists(tmp_path / "run")


def test_max_vocab_and_tower_width_are_checked_at_load():
    from tfrec_towers.config import Config, check_sizes

    d = yaml_config()
    d["features"]["query"][0]["max_vocab"] = 10 ** 12
    with pytest.raises(ValueError, match=r"feature 'user_id': embedding table of 1000000000001 x 8 floats \(up to max_vocab"):
        Config.from_dict(d)
    d = yaml_config()
    d["features"]["query"][0]["embedding_dim"] = 10 ** 6
    d["model"]["output_dim"] = 1000
    config = Config.from_dict(d)  # fits this machine (tables of 2 x 10^6: 24 MB); not 1 GB:
    with pytest.raises(ValueError, match=r"model: the query tower's first layer is a 1000008 x 1000 matrix"):
        check_sizes(config, budget=10 ** 9)


def test_vocabulary_sized_table_is_checked_before_any_run_file(tmp_path):
    """A table that fits with the one value known at load but not with the 20 users of the logs: refused
    after the stats pass, before config.yaml / feature_stats.json / run.json are written."""
    from tfrec_towers.config import memory_budget

    dim = int(0.4 * memory_budget() / (2 * 12))  # 2 rows (1 value + OOV) fit with Adam's slots, 21 do not
    text = CONFIG.replace("{name: user_id, type: id, embedding_dim: 8}",
                          f"{{name: user_id, type: id, embedding_dim: {dim}}}").replace("output_dim: 8", "output_dim: 0")
    logs = tmp_path / "logs"
    logs.mkdir()
    write_log(logs / "part", rows(50))
    run_dir = tmp_path / "run"
    code, out, err = run_cli("train", "--config", config_file(tmp_path, text), "--train", logs / "*.tfrecord",
                             "--run-dir", run_dir)
    assert_clean_exit_2(code, err, f"feature 'user_id': embedding table of 21 x {dim} floats (the training vocabulary")
    assert "scanned" in out
    for name in ("run.json", "config.yaml", "feature_stats.json", "scan.txt"):
        assert not os.path.exists(run_dir / name), name


# --- case 5: config files ----------------------------------------------------------------------------

def billion_laughs(levels=9):
    """train.batch_size: a list whose aliases expand to 9^9 strings (the YAML parses in microseconds)."""
    lines = ["    - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return CONFIG.replace("train: {batch_size: 32, epochs: 1}", "train:\n  epochs: 1\n  batch_size:\n" + "\n".join(lines))


BAD_CONFIGS = {
    "billion laughs": (billion_laughs(), ["aliases expand it from", "billion laughs"]),
    "50,000 levels": (CONFIG.replace("batch_size: 32", "batch_size: " + "[" * 50_000 + "]" * 50_000),
                      ["nested deeper than 64 levels"]),
    "a list for a number": (CONFIG.replace("max_len: 5", "max_len: [5]"),
                            ["feature 'item_history' (sequence): max_len: expected int, got [5]"]),
}


@pytest.mark.parametrize("what", sorted(BAD_CONFIGS))
def test_bad_config_files_exit_2_quickly_with_a_short_message(tmp_path, what):
    """Issue 23.5: the billion laughs ended in MemoryError after 48 s at 3.7 GB (its error message quoted
    the expanded value), 50,000-deep nesting in a RecursionError traceback, a list where a number or a
    name belongs in a TypeError traceback."""
    text, expected = BAD_CONFIGS[what]
    code, _, err = run_cli("train", "--config", config_file(tmp_path, text), "--train", tmp_path / "none*.tfrecord",
                           "--run-dir", tmp_path / "run", timeout=120)
    line = assert_clean_exit_2(code, err, *expected)
    assert len(line) < 600
    assert run_cli.peak_mb < 2000 and not os.path.exists(tmp_path / "run")


def test_config_values_are_quoted_short_and_typed():
    import json

    from tfrec_towers.config import Config, packaged
    from tfrec_towers.features.spec import load_mapping, quote

    shared = ["lol"] * 9
    for _ in range(9):
        shared = [shared] * 9  # 9^10 strings once expanded; quoting it must not expand it
    start = time.monotonic()
    assert len(quote(shared)) <= 80 and len(quote("x" * 10 ** 7)) <= 80 and quote("user_id") == "'user_id'"
    assert time.monotonic() - start < 1
    d = yaml_config()
    for section, key, value, message in [
            ("train", "learning_rate", [0.1], "config train.learning_rate: expected float, got [0.1]"),
            ("train", "batch_size", shared, "config train.batch_size: expected int, got [[["),
            ("data", "compression", ["GZIP"], "config data.compression: expected str, got ['GZIP']"),
            ("train", 1, 2, "config section 'train': unknown key(s) [1]")]:
        bad = json.loads(json.dumps(d))
        bad[section][key] = value if value is not shared else shared
        with pytest.raises(ValueError) as err:
            Config.from_dict(bad)
        assert message in str(err.value) and len(str(err.value)) < 400
    bad = yaml_config()
    bad["features"]["query"][0]["type"] = ["id"]
    with pytest.raises(ValueError, match=r"feature 'user_id': unknown type \['id'\]"):
        Config.from_dict(bad)
    bad = yaml_config()
    bad["features"]["query"][0]["name"] = ["user_id"]  # was a TypeError (unhashable) traceback
    with pytest.raises(ValueError, match=r"feature name: expected str, got \['user_id'\]"):
        Config.from_dict(bad)
    bad = yaml_config()
    bad["features"]["candidate"] = "item_id"
    with pytest.raises(ValueError, match="feature spec: candidate: expected a list, got 'item_id'"):
        Config.from_dict(bad)
    # --set goes through the same loader and checks
    config = Config.load(packaged("tutorial"))
    # exponents without a dot are floats (YAML 1.2, JSON), in a file and in --set alike; other strings stay strings
    assert config.with_overrides(["train.learning_rate=1e-3"]).train.learning_rate == 0.001
    from tfrec_towers.features.spec import load_yaml
    assert load_yaml("a: 1e-5\nb: -3E2\nc: 1e\nd: e5\ne: 1_0e1\nf: 1.5") == {
        "a": 1e-5, "b": -300.0, "c": "1e", "d": "e5", "e": 100.0, "f": 1.5}
    with pytest.raises(ValueError, match="expected float, got 'fast'"):
        config.with_overrides(["train.learning_rate=fast"])
    with pytest.raises(ValueError, match="train.epochs is a value, not a section"):
        config.with_overrides(["train.epochs.x=1"])
    with pytest.raises(ValueError, match="nested deeper than 64 levels"):
        config.with_overrides(["train.epochs=" + "[" * 5000])
    assert config.with_overrides(["train.epochs=2"]).train.epochs == 2
    # a feature of a list by its name, checked by the spec like any other
    movielens = Config.load(packaged("default"))
    history = movielens.with_overrides(["features.query.item_history.gradient_share=0.2"]).features.by_name["item_history"]
    assert history.gradient_share == 0.2 and history.max_len == 50
    with pytest.raises(ValueError, match="features.query has no feature 'nope'; it has \\['user_id', 'user_age_bucket'"):
        movielens.with_overrides(["features.query.nope.x=1"])
    with pytest.raises(ValueError, match="features.query is a list of features: set an option of one"):
        movielens.with_overrides(["features.query.item_history=1"])
    with pytest.raises(ValueError, match="feature 'item_history': gradient_share must be a number in"):
        movielens.with_overrides(["features.query.item_history.gradient_share=2"])


def test_json_and_yaml_documents_are_limited(tmp_path):
    from tfrec_towers.features.spec import load_mapping

    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' + "[" * 50_000 + "]" * 50_000 + "}", encoding="utf-8")
    with pytest.raises(ValueError, match="deep.json: nested deeper than 64 levels"):
        load_mapping(str(deep))
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("a: &r [1, *r]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="recursive alias"):
        load_mapping(str(recursive))
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\nb: 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        load_mapping(str(broken))
    few = tmp_path / "aliases.yaml"  # aliases are fine where they add little
    few.write_text("base: &b {x: 1}\nc: [*b, *b, *b]\n", encoding="utf-8")
    assert load_mapping(str(few))["c"] == [{"x": 1}] * 3


# --- case 6: damaged weights ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A small trained run and one exported version of it: (run_dir, items glob, base_dir)."""
    from tfrec_towers.config import Config
    from tfrec_towers.export.exporter import export_run
    from tfrec_towers.train import train

    root = tmp_path_factory.mktemp("weights")
    logs = root / "logs"
    logs.mkdir()
    pattern = os.path.dirname(write_log(logs / "part", rows(200))) + "/*.tfrecord"
    config = Config.load(config_file(root))
    run_dir = str(root / "run")
    train(config, pattern, run_dir, verbose=0, progress=lambda message: None)
    base = str(root / "models")
    export_run(run_dir, base, "m", index="brute", items=pattern, log=lambda message: None)
    return run_dir, pattern, base


def damage(run_dir, tmp_path, how):
    import shutil

    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    weights = os.path.join(copy, "weights")
    data = os.path.join(weights, "final.data-00000-of-00001")
    if how == "truncated data":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
    elif how == "empty data":
        open(data, "wb").close()
    elif how == "truncated index":
        index = os.path.join(weights, "final.index")
        with open(index, "r+b") as f:
            f.truncate(os.path.getsize(index) // 2)
    elif how == "missing shard":
        os.remove(data)
    return copy


@pytest.mark.parametrize("how,command", [("truncated data", "evaluate"), ("empty data", "export"),
                                         ("truncated index", "refresh-items"), ("missing shard", "export")])
def test_damaged_weights_are_named_and_nothing_is_published(exported_run, tmp_path, how, command):
    """Issue 23.6: raw TensorFlow tracebacks naming no file ("Read less bytes than requested")."""
    import json

    from tfrec_towers.export.exporter import weights_fingerprint
    from tfrec_towers.export.layout import METADATA_ASSET, latest_version

    run_dir, items, base = exported_run
    run = damage(run_dir, tmp_path, how)
    versions = sorted(os.listdir(os.path.join(base, "m")))
    if command == "evaluate":
        args = ["evaluate", "--run-dir", run, "--eval", items]
    elif command == "export":
        args = ["export", run, base, "m", "--index", "brute", "--items", items]
    else:
        # refresh-items reads the weights only when they are the ones the latest version was built
        # from: record the damaged files' fingerprint there, as if that version had been built from them.
        meta_path = os.path.join(base, "m", str(latest_version(os.path.join(base, "m"))), METADATA_ASSET)
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        original = dict(meta)
        meta["weights_fingerprint"] = weights_fingerprint(run)
        with open(meta_path, "w", encoding="utf-8") as f:
            json.dump(meta, f)
        args = ["refresh-items", base, "m", "--items", items, "--run-dir", run]
    try:
        code, _, err = run_cli(*args)
    finally:
        if command == "refresh-items":
            with open(meta_path, "w", encoding="utf-8") as f:
                json.dump(original, f)
    assert_clean_exit_2(code, err, f"{os.path.join(run, 'weights', 'final')}: damaged checkpoint (")
    assert sorted(os.listdir(os.path.join(base, "m"))) == versions  # nothing published, no staging left
