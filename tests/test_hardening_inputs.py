"""Issue 23: inputs a user can hand the package never segfault, exhaust memory or end in a traceback.

Real TFRecord files, config files and run directories in temp dirs; whatever could crash runs as a
``tfrec-towers`` subprocess whose exit status, stderr and peak memory are checked.
"""
import os
import struct
import subprocess
import time

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import pytest
import tensorflow as tf
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_masked_crc32c

from cli_helpers import cli, subprocess_env
from tfrec_towers.data import reader
from tfrec_towers.data.writer import write_tfrecords

KINDS = {"user_id": "bytes", "item_id": "bytes", "item_history": "bytes", "label": "int64"}

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
    out = [{"user_id": f"u{i % 20}", "item_id": f"i{i % 30}", "label": int(i % 3 > 0),
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


def run_cli(*args, timeout=240, preexec_fn=None):
    """``tfrec-towers ARGS`` -> (returncode, stdout, stderr, peak RSS in MB of the child)."""
    proc = subprocess.Popen(cli(*args), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=preexec_fn)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"tfrec-towers {args[0]} still ran after {timeout}s:\n{err[-3000:]}")
    return proc.returncode, out, err


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
        assert reader.masked_crc32c(data) == reference_masked_crc32c(data)


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
