"""Scale-out training: two MultiWorkerMirroredStrategy workers on 127.0.0.1 (TF_CONFIG), as real
processes, against one worker on the same data: the same full-catalog metrics within noise."""
import json
import os
import socket
import subprocess
import sys

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

from tfrec_towers.data.synthetic import generate_synthetic

ARGS = ["--set", "train.epochs=3", "--set", "train.batch_size=256"]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def train_command(files, run_dir, *extra):
    script = os.path.join(os.path.dirname(sys.executable), "tfrec-towers")
    return [script, "train", "--train", files["train"], "--eval", files["test"], "--items", files["items"],
            "--run-dir", str(run_dir), *ARGS, *extra]


def env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)


def test_two_workers_match_one_worker(tmp_path):
    files = generate_synthetic(str(tmp_path / "logs"), num_users=300, num_items=150, num_requests=4000, seed=0,
                               progress=None)["files"]
    cluster = [f"127.0.0.1:{p}" for p in free_ports(2)]
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(train_command(files, tmp_path / "multi", "--set", "train.strategy=multi_worker"),
                                        env=env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    single = subprocess.run(train_command(files, tmp_path / "single"), env=env(), capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    with open(tmp_path / "multi" / "metrics.json", encoding="utf-8") as f:
        multi = json.load(f)["all_items"]
    with open(tmp_path / "single" / "metrics.json", encoding="utf-8") as f:
        one = json.load(f)["all_items"]
    # learned (10 of 150 items at random: HR@10 0.067), and the same within seed-level noise
    assert multi["hr@10"] > 0.4 and one["hr@10"] > 0.4, (multi, one)
    assert abs(multi["hr@10"] - one["hr@10"]) < 0.08 and abs(multi["mrr"] - one["mrr"]) < 0.08, (multi, one)
    # logged batch metrics are global across workers, not summed over them (tf_keras's "auto")
    with open(tmp_path / "multi" / "epochs.jsonl", encoding="utf-8") as f:
        epochs = [json.loads(line) for line in f]
    assert len(epochs) == 3 and all(0 < e["batch_recall_at_100"] <= 1 for e in epochs), epochs
    # the chief (worker 0) wrote the run; worker 1 trained in its scratch directory and did not evaluate
    scratch = tmp_path / "multi" / "workers" / "worker-1"
    assert (scratch / "weights").is_dir() and not (scratch / "metrics.json").exists()
    assert not (tmp_path / "multi" / "workers" / "worker-0").exists()
