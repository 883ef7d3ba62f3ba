"""Issue 26: filtered retrieval as production callers ask for it (k per request, the user's seen items
excluded, an allowed set), answered inside the SavedModel: each index against exact filtered ranking
(the adversarial case included), real exports served over gRPC and REST, bad input, and evaluation of
an export through its own filtered signature."""
import json
import os
import subprocess
from concurrent import futures

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import grpc
import numpy as np
import pytest
import tensorflow as tf
from cli_helpers import cli, serve_in_subprocess
from cli_helpers import subprocess_env as env
from conftest import mixture, small_trained_run
from tensorflow_serving.apis import prediction_service_pb2_grpc
from test_serving_server import declared, http, predict_request

from tfrec_towers.data.inputs import user_histories
from tfrec_towers.evaluation.embeddings import embed_catalog, embed_events
from tfrec_towers.evaluation.job import evaluate_run, evaluate_saved_model, saved_model_answers
from tfrec_towers.evaluation.metrics import top_k
from tfrec_towers.export.exporter import export_run, read_metadata
from tfrec_towers.export.indexes import build_index
from tfrec_towers.run import load_model
from tfrec_towers.serving import ModelServer, RetrievalClient, ServingError

INDEXES = ["brute", "portable", "scann"]
Code = grpc.StatusCode


def padded(rows, width=None):
    out = np.full((len(rows), max([len(r) for r in rows] + [width or 1])), b"", dtype=object)
    for i, row in enumerate(rows):
        out[i, :len(row)] = [v.encode() if isinstance(v, str) else v for v in row]
    return out


def exact_filtered(scores, k, exclude, allowed=None):
    """Exact filtered ranking: row b's best k[b] positions among allowed[b] (default all), exclude[b] dropped."""
    out = []
    for b, row in enumerate(scores):
        row = row.copy()
        if allowed is not None:
            keep = np.zeros(len(row), bool)
            keep[list(allowed[b])] = True
            row[~keep] = -np.inf
        row[list(exclude[b])] = -np.inf
        best = np.argsort(-row, kind="stable")[:k[b]]
        out.append(best[np.isfinite(row[best])])
    return out


def recall(got, want):
    return float(np.mean([len(set(g) & set(w)) / max(len(w), 1) for g, w in zip(got, want)]))


def positions(ids, names):
    lookup = {n: i for i, n in enumerate(ids)}
    return [[lookup[n] for n in row if n] for row in names]


# ---- each index against exact filtered ranking --------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog():
    rng = np.random.default_rng(0)
    x, q = mixture(rng, [20_000, 100], 32, 200, 1.5)
    ids = np.array([f"i{i}" for i in range(len(x))])
    scores = q @ x.T
    return {"x": x, "q": q, "ids": ids, "scores": scores, "order": np.argsort(-scores, axis=1), "rng": rng}


def test_depth_schedule_deepest_is_the_probe_tables_threshold():
    """ScaNN's first pass asks ``depth > deepest(probes)`` instead of looking every row up in the table:
    the two must agree at every depth, past the grid included."""
    from tfrec_towers.export.filtering import DepthSchedule
    schedule = DepthSchedule([100, 200, 400], [20, 35, 80], 120)
    for probes in (10, 20, 21, 35, 60, 80, 119, 120, 500):
        deepest = schedule.deepest(probes)
        for depth in range(0, 700):
            assert (int(schedule.probe(tf.constant([depth]))[0]) > probes) == (depth > deepest), (probes, depth)
    assert schedule.deepest(120) == float("inf")


@pytest.mark.parametrize("index", INDEXES)
def test_filtered_top_k_against_exact_filtered_ranking(catalog, index):
    """k = 50, M = 500 excluded items, random or the user's own top 500 (adversarial: the answers are the
    unfiltered ranks 500-550): brute is exact; portable and scann keep recall within 1 point of their
    unfiltered recall at the same settings. No excluded item is ever returned; every row is full."""
    x, q, ids, scores, order = catalog["x"], catalog["q"], catalog["ids"], catalog["scores"], catalog["order"]
    k, m, n = 50, 500, len(x)
    built = build_index(index, ids, x, k)
    search = tf.function(built.filtered)
    _, unfiltered = built(tf.constant(q))
    base = recall(positions(ids, unfiltered.numpy().astype(str)), order[:, :k])
    rng = np.random.default_rng(1)
    cases = {"none": [[] for _ in q], "random": [rng.choice(n, m, replace=False) for _ in q],
             "top": [order[b, :m] for b in range(len(q))]}
    found = {}
    for case, exclude in cases.items():
        got_scores, got_ids, count = search(tf.constant(q), tf.constant(k), tf.constant(padded([ids[e] for e in exclude])))
        got = positions(ids, got_ids.numpy().astype(str))
        assert count.numpy().tolist() == [k] * len(q), (case, count)
        assert all(not set(g) & set(e) for g, e in zip(got, exclude)), case
        want = exact_filtered(scores, [k] * len(q), exclude)
        found[case] = recall(got, want)
        exact_scores = np.take_along_axis(scores, np.array(got), 1)
        np.testing.assert_allclose(got_scores.numpy(), exact_scores, atol=1e-5)  # exact scores, best first
        assert np.all(np.diff(got_scores.numpy(), axis=1) <= 1e-6)
        if index == "brute":
            wanted = np.take_along_axis(scores, np.array(want), 1)
            np.testing.assert_allclose(got_scores.numpy(), wanted, atol=1e-6)  # the exact answer (up to ties)
    print(f"{index}: recall@{k} unfiltered {base:.3f}, filtered {found}")
    if index == "brute":
        assert base == 1.0 and all(r == 1.0 for r in found.values()), found
    for case, r in found.items():
        assert r >= base - 0.01, (index, case, r, base)


@pytest.mark.parametrize("index", INDEXES)
def test_per_row_k_padding_unknown_ids_and_allowed_sets(index):
    """k per row; unknown, duplicate and "" IDs ignored; fewer candidates left than k -> count; the allowed
    set ([A] shared or [B, A]) is exact for every index type, exclusions applied within it."""
    rng = np.random.default_rng(2)
    x, q = mixture(rng, [400, 3], 16, 10, 1.0)
    ids = np.array([f"item{i}" for i in range(len(x))])
    scores = q @ x.T
    built = build_index(index, ids, x, 5, max_k=20)
    assert built.max_k == 20
    search = tf.function(built.filtered)
    k = [1, 7, 20]
    exclude = [["nope", "item3", "item3", ""], [], list(ids[3:])]  # row 2: only 3 items left
    s, got, count = [v.numpy() for v in search(tf.constant(q), tf.constant(k, tf.int32), tf.constant(padded(exclude)))]
    assert count.tolist() == [1, 7, 3]
    want = exact_filtered(scores, k, [[3], [], list(range(3, 400))])
    assert sorted(positions(ids, got.astype(str))[2]) == [0, 1, 2]
    for b in range(3):
        assert (got[b, count[b]:] == b"").all() and np.isneginf(s[b, count[b]:]).all()
        row = positions(ids, [got[b, :count[b]].astype(str)])[0]
        np.testing.assert_allclose(s[b, :count[b]], scores[b, row], atol=1e-5)
        if index == "brute":
            assert row == list(want[b])
    assert b"item3" not in got[0]

    allowed = ["item5", "item9", "item9", "unknown", "item17", "item3", "item250", ""]
    s, got, count = [v.numpy() for v in search(tf.constant(q), tf.constant(4), tf.constant(padded([["item17"]] * 3)),
                                               tf.constant(np.array(allowed, dtype=object).astype(bytes)))]
    assert count.tolist() == [4, 4, 4]  # of item5, item9, item3, item250 (item17 excluded)
    for b, w in enumerate(exact_filtered(scores, [4] * 3, [[17]] * 3, [[5, 9, 17, 3, 250]] * 3)):
        assert positions(ids, [got[b, :4].astype(str)])[0] == list(w)
    per_row = padded([["item1", "item2"], ["item8"], []])
    s, got, count = [v.numpy() for v in search(tf.constant(q), tf.constant([2, 2, 2]), tf.constant(padded([[], [], []])),
                                               tf.constant(per_row))]
    assert count.tolist() == [2, 1, 0] and got[1, 0] == b"item8" and (got[2] == b"").all()
    assert np.isneginf(s[2]).all()


def test_the_graph_itself_rejects_bad_k_and_allowed_naming_them():
    """What real TF Serving runs: the signature's own checks (InvalidArgument naming the input)."""
    x = np.eye(8, dtype=np.float32)
    built = build_index("brute", np.array([str(i) for i in range(8)]), x, 2, max_k=4)
    search = tf.function(built.filtered, input_signature=[
        tf.TensorSpec([None, 8]), tf.TensorSpec(None, tf.int32), tf.TensorSpec([None, None], tf.string),
        tf.TensorSpec(None, tf.string)])
    q, none = tf.constant(x[:2]), tf.constant([[b""], [b""]])
    everything = tf.constant(np.array([str(i) for i in range(8)], dtype=object).astype(bytes))
    for k, allowed, words in [(0, everything, ["`k`", ">= 1"]), (5, everything, ["`k`", "<= 4", "--max-k"]),
                              (-3, everything, ["`k`"]), ([1, 2, 3], everything, ["`k`", "3", "2"]),
                              ([[1], [1]], everything, ["`k`", "scalar"]),
                              (2, tf.constant([[[b"1"]]]), ["`allowed_item_ids`"]),
                              (2, tf.constant([[b"1"]] * 3), ["`allowed_item_ids`", "3"])]:
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            search(q, tf.constant(k, tf.int32), none, allowed)
        assert all(w in caught.value.message for w in words), (k, caught.value.message)
    _, got, count = search(q, tf.constant(4), none, everything)
    assert count.numpy().tolist() == [4, 4] and got.numpy()[0, 0] == b"0"


# ---- a real export: fresh process, served over gRPC and REST ------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("filtered")
    run_dir, files, config = small_trained_run(root, num_users=200, num_items=120, num_requests=2000, seed=3, epochs=2)
    base = str(root / "models")
    versions = {index: export_run(run_dir, base, index, index=index, k=10, max_k=100, log=print)
                for index in ("brute", "portable")}
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(files["test"])),
                                                          compression_type="GZIP").take(6)]
    query = config.features.prepare(tf.io.parse_example(records, config.features.parse_spec("query")))
    model = load_model(run_dir)
    ids, item_emb = embed_catalog(model, config, files["items"], progress=None)
    return {"root": root, "run_dir": run_dir, "files": files, "config": config, "base": base, "versions": versions,
            "records": records, "query": {k: v.numpy() for k, v in query.items()}, "ids": ids,
            "scores": model.query_tower(query).numpy() @ item_emb.T}


def test_export_metadata_signatures_and_stock_ops(exported):
    for index, version_dir in exported["versions"].items():
        meta = read_metadata(version_dir)["index"]
        assert (meta["k"], meta["max_k"]) == (10, 100), meta
        assert index == "brute" or meta["probe_schedule"]["probes"][0] == meta["params"]["num_probe"]
        done = subprocess.run(cli("ops", version_dir, "--check-stock"), env=env(), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, (index, done.stdout, done.stderr[-2000:])
        assert set(json.loads(done.stdout)["non_stock_ops"]) <= {"tensorflow-text"}, done.stdout


@pytest.fixture(scope="module")
def server(exported):
    with ModelServer(exported["base"], grpc_port=0, rest_port=0, poll_interval_s=0.5, max_batch_size=64,
                     max_request_bytes=1 << 20, log=print) as s:
        yield s


def test_client_filtered_requests_match_the_saved_model_and_exact_ranking(exported, server):
    query, ids, scores = exported["query"], exported["ids"], exported["scores"]
    b = len(query["user_id"])
    history = [list(query["item_history"][i][query["item_history"][i] != b""].astype(str)) for i in range(b)]
    ks = [5, 20, 1, 100, 3, 10]
    lookup = {item: i for i, item in enumerate(ids)}
    for index, version_dir in exported["versions"].items():
        loaded = tf.saved_model.load(version_dir)
        with RetrievalClient(server.target, index, timeout_s=30) as client:
            top = client.top_k(query, k=ks, exclude=history)
            want = exact_filtered(scores, ks, [[lookup[h] for h in row if h in lookup] for row in history])
            assert top.item_ids.shape == (b, 100) and top.count.tolist() == [len(w) for w in want]
            local = loaded.signatures["filtered"](**{n: tf.constant(v) for n, v in query.items()},
                                                  k=tf.constant(ks, tf.int32), exclude_item_ids=tf.constant(padded(history)))
            np.testing.assert_array_equal(top.item_ids, local["item_ids"].numpy().astype(str))
            got = positions(ids, top.item_ids)
            if index == "brute":
                assert got == [list(w) for w in want]
            else:
                assert recall(got, want) >= 0.95
            assert all(not set(top.item_ids[i]) & set(history[i]) for i in range(b))
            # the examples variant reads the same fields from tf.Example
            examples = []
            for record, k, h in zip(exported["records"], ks, history):
                example = tf.train.Example.FromString(record)
                example.features.feature["k"].int64_list.value.append(k)
                example.features.feature["exclude_item_ids"].bytes_list.value.extend(x.encode() for x in h)
                examples.append(example.SerializeToString())
            outputs, _ = client.predict({"examples": np.array(examples, dtype=object)}, "filtered_examples")
            np.testing.assert_array_equal(outputs["item_ids"].astype(str), top.item_ids)
            # allowed: one shared list, or one per row; the answer is exact for every index type
            allowed = list(ids[:30])
            top = client.top_k(query, k=4, exclude=[[ids[0]]] * b, allowed=allowed)
            assert top.count.tolist() == [4] * b
            assert positions(ids, top.item_ids) == [list(w) for w in exact_filtered(
                scores, [4] * b, [[0]] * b, [range(30)] * b)]
            top = client.top_k(query, k=2, allowed=[[ids[5], ids[6], "unknown"]] + [[ids[7]]] * (b - 1))
            assert top.count.tolist() == [2] + [1] * (b - 1) and top.item_ids[1, 0] == ids[7]
            assert client.top_k(query).item_ids.shape == (b, 10)  # serving_default keeps its contract


def json_value(value):
    value = value.tolist() if isinstance(value, np.ndarray) else value.item() if isinstance(value, np.generic) else value
    if isinstance(value, list):
        return [json_value(v) for v in value]
    return value.decode() if isinstance(value, bytes) else value


def test_rest_accepts_the_filtered_signatures(exported, server):
    query = exported["query"]
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/brute:predict"
    rows = [{n: json_value(v[i]) for n, v in query.items()} for i in range(2)]
    exclude = [[exported["ids"][0], exported["ids"][1]], ["", ""]]
    with RetrievalClient(server.target, "brute", timeout_s=30) as client:
        want = client.top_k({n: v[:2] for n, v in query.items()}, k=[3, 5], exclude=exclude)
    status, reply = http(url, {"signature_name": "filtered", "instances": [
        {**row, "k": k, "exclude_item_ids": e} for row, k, e in zip(rows, [3, 5], exclude)]})
    assert status == 200, reply
    assert [r["item_ids"] for r in reply["predictions"]] == want.item_ids.tolist()
    assert [r["count"] for r in reply["predictions"]] == [3, 5]
    columns = {n: [row[n] for row in rows] for n in rows[0]}
    status, reply = http(url, {"signature_name": "filtered_allowed", "inputs": {
        **columns, "k": 2, "exclude_item_ids": exclude, "allowed_item_ids": list(exported["ids"][:4])}})
    assert status == 200, reply
    assert reply["outputs"]["count"] == [2, 2] and exported["ids"][0] not in reply["outputs"]["item_ids"][0]
    status, reply = http(url, {"signature_name": "filtered", "inputs": {**columns, "k": 0, "exclude_item_ids": exclude}})
    assert status == 400 and "'k'" in reply["error"], reply


def test_bad_filtered_requests_are_rejected_naming_the_input(exported, server):
    query = {n: v[:2] for n, v in exported["query"].items()}
    good = {**query, "k": np.array([3, 3], np.int32), "exclude_item_ids": padded([["x"], []])}
    cases = [  # (inputs, signature, what the message must name)
        ({**good, "k": np.array(0, np.int32)}, "filtered", ["'k'", "between 1 and 100"]),
        ({**good, "k": np.array([3, 101], np.int32)}, "filtered", ["'k'", "between 1 and 100", "101", "--max-k"]),
        ({**good, "k": np.array([-3, 2], np.int32)}, "filtered", ["'k'", "-3"]),
        ({**good, "k": np.array([3, 3, 3], np.int32)}, "filtered", ["'k'", "3 values for a batch of 2"]),
        ({**good, "k": np.array([[3], [3]], np.int32)}, "filtered", ["'k'", "scalar or [B]"]),
        ({**good, "k": np.array([3, 3], np.int64)}, "filtered", ["'k'", "int32", "int64"]),
        ({**good, "exclude_item_ids": np.array([[1, 2], [3, 4]])}, "filtered", ["'exclude_item_ids'", "string"]),
        ({**good, "exclude_item_ids": padded([["x"]] * 3)}, "filtered", ["different batch sizes"]),
        ({**good, "exclude_item_ids": np.full((2, 20_000), b"an-item-id", dtype=object)}, "filtered",
         ["'exclude_item_ids'", "max_request_bytes"]),
        ({**good, "allowed_item_ids": np.full((2, 2, 2), b"x", dtype=object)}, "filtered_allowed",
         ["'allowed_item_ids'", "[A]", "[B, A]"]),
        ({**good, "allowed_item_ids": padded([["x"]] * 3)}, "filtered_allowed", ["'allowed_item_ids'", "3 rows"]),
        ({**good, "allowed_item_ids": np.array([7, 8])}, "filtered_allowed", ["'allowed_item_ids'", "string"]),
    ]
    with RetrievalClient(server.target, "portable", timeout_s=30, retries=0) as client:
        for inputs, signature, words in cases:
            with pytest.raises(ServingError) as caught:
                client.predict(inputs, signature)
            assert caught.value.code() == Code.INVALID_ARGUMENT, (words, caught.value)
            assert all(w in caught.value.details() for w in words), (words, caught.value.details())
        # the tf.Example variant: the graph's own check (as real TF Serving would answer)
        example = tf.train.Example.FromString(exported["records"][0])
        example.features.feature["k"].int64_list.value.append(0)
        with pytest.raises(ServingError) as caught:
            client.predict({"examples": np.array([example.SerializeToString()], dtype=object)}, "filtered_examples")
        assert caught.value.code() == Code.INVALID_ARGUMENT and "`k` must be >= 1" in caught.value.details()
        # the client refuses what it can check itself, naming the argument
        for kwargs, words in [(dict(k=0), ["k", ">= 1"]), (dict(k=-1), ["k"]), (dict(k=[3, 3, 3]), ["k", "3 values"]),
                              (dict(k=2.5), ["k", "integer"]), (dict(exclude=[["a"]]), ["k", "required"]),
                              (dict(k=3, exclude=[[1, 2], []]), ["exclude", "int"]),
                              (dict(k=3, exclude=[["a"]]), ["exclude", "1 rows for a batch of 2"]),
                              (dict(k=3, allowed=[7, 8]), ["allowed", "int"]),
                              (dict(k=3, exclude="abc"), ["exclude"])]:
            with pytest.raises(ValueError) as caught:
                client.top_k(query, **kwargs)
            assert all(w in str(caught.value) for w in words), (kwargs, caught.value)
        assert client.top_k(query, k=3, exclude=[["x"], []]).count.tolist() == [3, 3]  # still serving


def test_huge_filter_inputs_leave_server_memory_flat(exported):
    """Tiny requests declaring huge k, exclude_item_ids or allowed_item_ids are refused on their declared
    shapes (naming the input) before anything is allocated: the server's peak RSS grows by < 100 MB."""
    query = {n: tf.make_tensor_proto(v[:1]) for n, v in exported["query"].items()}
    x = dict(string_val=[b"x"])
    bombs = [  # (signature, filter inputs, what the message must name)
        ("filtered", dict(k=declared(tf.int32, [20_000_000], int_val=[1]), exclude_item_ids=declared(tf.string, [1, 1], **x)),
         ["'k'", "20000000 values for a batch of 1"]),
        ("filtered", dict(k=declared(tf.int32, [], int_val=[1]), exclude_item_ids=declared(tf.string, [1, 10_000_000], **x)),
         ["'exclude_item_ids'", "max_request_bytes", "[1, 10000000]"]),
        ("filtered", dict(k=declared(tf.int32, [], int_val=[1]), exclude_item_ids=declared(tf.string, [1, 1, 5_000_000], **x)),
         ["'exclude_item_ids'", "[1, 1, 5000000]"]),
        ("filtered_allowed", dict(k=declared(tf.int32, [], int_val=[1]), exclude_item_ids=declared(tf.string, [1, 1], **x),
                                  allowed_item_ids=declared(tf.string, [10_000_000], **x)),
         ["'allowed_item_ids'", "max_request_bytes"]),
        ("filtered_allowed", dict(k=declared(tf.int32, [], int_val=[1]), exclude_item_ids=declared(tf.string, [1, 1], **x),
                                  allowed_item_ids=declared(tf.string, [1, 2, 3_000_000], **x)),
         ["'allowed_item_ids'", "[A]"]),
    ]
    with serve_in_subprocess(exported["base"]) as server, grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def answer_normally():
            request = predict_request("brute", "filtered", **query, k=tf.make_tensor_proto(np.int32(5)),
                                      exclude_item_ids=tf.make_tensor_proto(padded([["x"]])))
            assert tf.make_ndarray(stub.Predict(request, timeout=60).outputs["count"]).tolist() == [5]

        answer_normally()
        reset = server.reset_peak_memory()
        before = server.memory_kb("VmRSS" if reset else "VmHWM")

        def send(bomb):
            signature, inputs, words = bomb
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(predict_request("brute", signature, **query, **inputs), timeout=60)
            return caught.value, words

        with futures.ThreadPoolExecutor(2) as pool:
            for error, words in pool.map(send, [b for bomb in bombs for b in (bomb, bomb)]):
                assert error.code() == Code.INVALID_ARGUMENT, error
                assert all(w in error.details() for w in words), (words, error.details())
        grown_mb = (server.memory_kb("VmHWM") - before) / 1024
        print(f"server peak RSS grew by {grown_mb:.1f} MB")
        answer_normally()
    assert grown_mb < 100, f"peak RSS grew by {grown_mb:.0f} MB"
    assert server.returncode == 0 and "Traceback" not in server.output(), server.output()[-5000:]


def test_warmup_holds_the_filtered_signatures(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(exported["versions"]["portable"], "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    names = [log.predict_log.request.model_spec.signature_name for log in logs]
    for name in ("filtered", "filtered_examples", "filtered_allowed", "filtered_allowed_examples"):
        assert names.count(name) == 2, names  # one row and several
    for log in logs:  # every input batched: what TF Serving's --enable_batching needs
        request = log.predict_log.request
        rows = {p.tensor_shape.dim[0].size for p in request.inputs.values()}
        assert len(rows) == 1, (request.model_spec.signature_name, rows)


# ---- evaluation of the export through its own filtered signature --------------------------------------------


def test_evaluate_saved_model_agrees_with_exact_exclude_history(exported, tmp_path):
    """HR@K of each export's ``filtered`` signature, the user's history excluded: equal to the exact
    ``exclude_history`` figures for brute; for portable, off by at most the share of events whose filtered
    top-K differs from the exact one (the index's measured miss rate)."""
    run_dir, files, config = exported["run_dir"], exported["files"], exported["config"]
    exact = evaluate_run(run_dir, files["test"], output=str(tmp_path / "exact.json"))["exclude_history"]
    model = load_model(run_dir)
    ids, item_emb = embed_catalog(model, config, files["items"], progress=None)
    users, targets, query = embed_events(model, config, files["test"], progress=None)
    history = user_histories(config, files["train"], progress=None)
    lookup = {item: i for i, item in enumerate(ids)}
    exclude = [np.array([lookup[i] for i in history.get(u, set()) - {t} if i in lookup], dtype=np.int64)
               for u, t in zip(users.tolist(), targets.tolist())]
    exact_top = top_k(query, item_emb, 100, exclude)
    for index, version_dir in exported["versions"].items():
        got = evaluate_saved_model(version_dir, files["test"], output=str(tmp_path / f"{index}.json"))
        assert json.loads((tmp_path / f"{index}.json").read_text())["saved_model"] == got["saved_model"]
        _, answered_targets, answers = saved_model_answers(version_dir, config, files["test"], history, progress=None)
        np.testing.assert_array_equal(answered_targets, targets)
        for k in (1, 5, 10, 50, 100):
            differs = np.mean([set(a[:k]) - {""} != set(ids[[p for p in e[:k] if p not in set(x)]])
                               for a, e, x in zip(answers, exact_top, exclude)])
            gap = abs(got["saved_model"][f"hr@{k}"] - exact[f"hr@{k}"])
            print(f"{index}: HR@{k} saved model {got['saved_model'][f'hr@{k}']:.4f}, exact {exact[f'hr@{k}']:.4f}, "
                  f"filtered top-{k} differs from exact for {differs:.4f} of events")
            if index == "brute":
                assert gap == 0, (k, got["saved_model"], exact)
            assert gap <= differs + 1e-12, (index, k, gap, differs)


def test_cli_export_max_k_and_evaluate_saved_model(exported, tmp_path):
    base = tmp_path / "cli-models"
    done = subprocess.run(cli("export", exported["run_dir"], base, "m", "--index", "brute", "--k", "5", "--max-k", "50"),
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (version,) = os.listdir(base / "m")
    assert read_metadata(str(base / "m" / version))["index"]["max_k"] == 50
    out = tmp_path / "m.json"
    done = subprocess.run(cli("evaluate", "--saved-model", base / "m", "--eval", exported["files"]["test"],
                              "--output", out), env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["max_k"] == 50 and set(metrics["saved_model"]) >= {"hr@1", "hr@10", "hr@50", "mrr@50"}
    assert "hr@100" not in metrics["saved_model"]
    done = subprocess.run(cli("evaluate", "--eval", exported["files"]["test"]), env=env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2 and "--run-dir is required" in done.stderr
