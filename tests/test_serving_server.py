"""The local model server and the client over real gRPC/HTTP on 127.0.0.1, serving real SavedModels."""
import base64
import contextlib
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format, wrappers_pb2
from cli_helpers import serve_in_subprocess
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tfrec_towers.serving import ModelServer, RetrievalClient, ServingError

NAME, K = "toy", 3
USERS, AGES = ["u1", "u2"], [1.0, 2.0]
Code = grpc.StatusCode


class Toy(tf.Module):
    """Every output encodes ``version``, so a response's content proves which version computed it."""

    def __init__(self, version: int):
        super().__init__()
        self.v = version

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.float32)])
    def top_k(self, user_id, age):
        batch = tf.shape(user_id)[0]
        prefix = tf.tile(tf.strings.join([user_id, f"-v{self.v}-"])[:, None], [1, K])
        ids = tf.strings.join([prefix, tf.tile(tf.strings.as_string(tf.range(K))[None, :], [batch, 1])])
        scores = 100.0 * self.v + age[:, None] + tf.range(K, dtype=tf.float32)[None, :]
        return {"item_ids": ids, "scores": scores}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.float32)])
    def user_embedding(self, user_id, age):
        return {"embedding": tf.stack([age, tf.fill(tf.shape(age), float(self.v))], axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def item_embedding(self, item_id):
        length = tf.cast(tf.strings.length(item_id), tf.float32)
        return {"embedding": tf.stack([length, tf.fill(tf.shape(length), float(self.v))], axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.string), tf.TensorSpec([None], tf.string)])
    def score(self, user_id, item_id):
        tf.debugging.assert_positive(tf.strings.length(item_id), message="empty item id")
        return {"scores": tf.cast(tf.strings.length(item_id), tf.float32) + self.v}

    @tf.function(input_signature=[])
    def metadata(self):
        return {"metadata": tf.constant(json.dumps({"version": self.v, "k": K}))}


def expected_top_k(users, ages, version):
    ids = [[f"{u}-v{version}-{k}" for k in range(K)] for u in users]
    return np.array(ids), np.array([[100.0 * version + a + k for k in range(K)] for a in ages], np.float32)


def check_top_k(top, users=USERS, ages=AGES, version=None):
    """The content matches the version the response reports (and ``version`` when given)."""
    assert version is None or top.version == version, top
    ids, scores = expected_top_k(users, ages, top.version)
    np.testing.assert_array_equal(top.item_ids, ids)
    np.testing.assert_allclose(top.scores, scores)


@pytest.fixture(scope="module")
def publish(tmp_path_factory):
    """``publish(base, version, name=NAME, content=version)`` writes a version the way an exporter does:
    a complete SavedModel saved into ``.tmp-*`` and renamed into place. Templates are saved once per module."""
    templates = tmp_path_factory.mktemp("templates")

    def template(content):
        path = templates / str(content)
        if not path.exists():
            toy = Toy(content)
            signatures = {"serving_default": toy.top_k, "user_embedding": toy.user_embedding,
                          "item_embedding": toy.item_embedding, "score": toy.score, "metadata": toy.metadata}
            tf.saved_model.save(toy, str(path), signatures=signatures)
            (path / "assets").mkdir(exist_ok=True)
            (path / "assets" / "tfrec_towers.json").write_text(json.dumps({"version": content, "index": "toy"}))
        return path

    def _publish(base, version, name=NAME, content=None):
        staging = base / name / f".tmp-{version}-test"
        shutil.copytree(template(content or version), staging)
        os.rename(staging, base / name / str(version))

    return _publish


def wait_for(condition, what, timeout=60.0):
    """Poll ``condition`` until true; fail after ``timeout`` s (generous: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


@contextlib.contextmanager
def running(base, **kwargs):
    logs = []
    server = ModelServer(str(base), grpc_port=0, poll_interval_s=0.1, log=logs.append, **kwargs)
    with server, RetrievalClient(server.target, model_name=NAME, timeout_s=30) as client:
        yield server, client, logs


@contextlib.contextmanager
def raw_stub(server):
    """TF Serving's generated stub, for requests the client has no method for."""
    with grpc.insecure_channel(server.target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_grpc_round_trip(publish, tmp_path):
    """Predict, GetModelMetadata and GetModelStatus answer as TF Serving would for version 1."""
    publish(tmp_path, 1)
    with running(tmp_path) as (server, client, logs):
        check_top_k(client.top_k({"user_id": USERS, "age": AGES}), version=1)
        assert client.metadata() == {"version": 1, "k": K}
        embedding, version = client.user_embedding({"user_id": USERS, "age": AGES})
        assert version == 1 and embedding.tolist() == [[1.0, 1.0], [2.0, 1.0]]
        embedding, _ = client.item_embedding({"item_id": ["abc"]})
        assert embedding.tolist() == [[3.0, 1.0]]
        scores, _ = client.score({"user_id": ["u1"]}, {"item_id": ["a", "abcd"]})
        assert scores.tolist() == [2.0, 5.0]

        defs = client.signature_defs()
        assert {"serving_default", "user_embedding", "item_embedding", "score", "metadata"} <= set(defs)
        assert set(defs["serving_default"].inputs) == {"user_id", "age"}
        assert set(defs["serving_default"].outputs) == {"item_ids", "scores"}
        assert client.status() == [(1, "AVAILABLE")]

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["tfrec_towers"])
        request.model_spec.name = NAME
        with raw_stub(server) as stub:
            response = stub.GetModelMetadata(request, timeout=30)
            info = wrappers_pb2.StringValue()
            response.metadata["tfrec_towers"].Unpack(info)
            assert json.loads(info.value) == {"version": 1, "index": "toy"} and response.model_spec.version.value == 1

            request = predict_pb2.PredictRequest(output_filter=["scores"])
            request.model_spec.name = NAME
            request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(USERS))
            request.inputs["age"].CopyFrom(tf.make_tensor_proto(AGES, tf.float32))
            response = stub.Predict(request, timeout=30)
            assert list(response.outputs) == ["scores"] and response.model_spec.signature_name == "serving_default"
    assert any("loaded model 'toy' version 1" in line for line in logs)


def test_malformed_requests_are_rejected_and_the_server_keeps_serving(publish, tmp_path):
    """Each bad request gets its own status code and a message naming the problem; none hurts the next."""
    publish(tmp_path, 1)
    good = {"user_id": USERS, "age": AGES}
    cases = [  # (predict kwargs, code, what the message must name)
        (dict(inputs={"user_id": USERS, "age": np.array([1, 2])}), Code.INVALID_ARGUMENT,
         ["'age'", "float32", "int64"]),
        (dict(inputs={"user_id": USERS, "age": np.ones((2, 1), np.float32)}), Code.INVALID_ARGUMENT,
         ["'age'", "[None]", "[2, 1]"]),
        (dict(inputs={"user_id": USERS}), Code.INVALID_ARGUMENT, ["missing input 'age'"]),
        (dict(inputs={**good, "colour": ["red", "blue"]}), Code.INVALID_ARGUMENT, ["unknown input 'colour'"]),
        (dict(inputs={"user_id": USERS, "age": [1.0, 2.0, 3.0]}), Code.INVALID_ARGUMENT,
         ["different batch sizes", "user_id=2", "age=3"]),
        (dict(inputs={"user_id": ["u"] * 5, "age": [1.0] * 5}), Code.INVALID_ARGUMENT,
         ["batch of 5", "max_batch_size 4"]),
        (dict(inputs=good, signature_name="nope"), Code.NOT_FOUND, ["'nope'", "serving_default", "score"]),
        (dict(inputs=good, version=99), Code.NOT_FOUND, ["version 99", "loaded versions: 1"]),
        (dict(inputs={"user_id": ["a", "b"], "item_id": ["x", "y"]}, signature_name="score"), Code.INVALID_ARGUMENT,
         ["'user_id' must have shape [1]", "got [2]"]),
        (dict(inputs={"user_id": ["a"], "item_id": ["x", ""]}, signature_name="score"), Code.INVALID_ARGUMENT,
         ["empty item id"]),
    ]
    with running(tmp_path, max_batch_size=4) as (server, client, logs):
        for kwargs, code, words in cases:
            with pytest.raises(ServingError) as caught:
                client.predict(**kwargs)
            assert caught.value.code() == code, (kwargs, caught.value)
            assert all(w in caught.value.details() for w in words + ["'toy'"]), (words, caught.value.details())
            check_top_k(client.top_k(good), version=1)

        with RetrievalClient(server.target, model_name="nope", timeout_s=30) as other, \
                pytest.raises(ServingError) as caught:
            other.top_k(good)
        assert caught.value.code() == Code.NOT_FOUND and "'nope'" in caught.value.details()
        assert "toy" in caught.value.details()  # lists what exists

        with raw_stub(server) as stub:
            request = predict_pb2.PredictRequest()
            request.model_spec.name, request.model_spec.version_label = NAME, "stable"
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request, timeout=30)
            assert caught.value.code() == Code.INVALID_ARGUMENT and "'stable'" in caught.value.details()

            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
            request.model_spec.name = NAME
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetModelMetadata(request, timeout=30)
            assert caught.value.code() == Code.INVALID_ARGUMENT and "tfrec_towers" in caught.value.details()
        check_top_k(client.top_k(good), version=1)


def test_hot_swap_under_load_drops_no_request(publish, tmp_path):
    """Versions 2 and 3 appear while 4 threads send requests: none fails, each answer matches the version
    it reports, each thread sees versions in order, and version 3 answers at the end."""
    publish(tmp_path, 1)
    with running(tmp_path) as (server, client, logs):
        stop, failures = threading.Event(), []
        seen = [[] for _ in range(4)]

        def hammer(i):
            users, ages = [f"t{i}", "x"], [float(i), 0.5]
            while not stop.is_set():
                try:
                    top = client.top_k({"user_id": users, "age": ages})
                    check_top_k(top, users, ages)
                except Exception as e:  # noqa: BLE001 (any failure is the finding)
                    failures.append(repr(e))
                    return
                seen[i].append(top.version)

        threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(len(seen))]
        for thread in threads:
            thread.start()
        try:
            for version in (1, 2, 3):
                if version > 1:
                    publish(tmp_path, version)
                wait_for(lambda: failures or all(s and s[-1] == version for s in seen), f"version {version} answering")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    assert not failures, failures[:3]
    assert all(s == sorted(s) and s[-1] == 3 for s in seen)
    assert {v for s in seen for v in s} == {1, 2, 3}
    assert any("unloaded model 'toy' version 1" in line for line in logs)


def test_staging_incomplete_and_corrupt_versions_are_skipped(publish, tmp_path):
    """``.tmp-*`` and version directories without saved_model.pb are ignored; a corrupt version is logged
    once and skipped while version 1 keeps serving, and retried when its directory is replaced."""
    model_dir = tmp_path / NAME
    publish(tmp_path, 1)
    publish(tmp_path, 5)
    os.rename(model_dir / "5", model_dir / ".tmp-5-host-1")  # complete, but still staging
    (model_dir / "7" / "variables").mkdir(parents=True)  # being written: no saved_model.pb yet
    (model_dir / "8").write_text("a file, not a version")
    with running(tmp_path) as (server, client, logs):
        assert client.status() == [(1, "AVAILABLE")]
        staging = model_dir / ".tmp-9"
        staging.mkdir()
        (staging / "saved_model.pb").write_bytes(b"garbage")
        os.rename(staging, model_dir / "9")

        def failures():
            return [line for line in logs if line.startswith("failed to load model 'toy' version 9")]

        wait_for(failures, "the corrupt version's failure")
        assert str(model_dir / "9") in failures()[0] and "serving version(s): 1;" in failures()[0]
        check_top_k(client.top_k({"user_id": USERS, "age": AGES}), version=1)
        # Models are polled in name order: once 'zz-sentinel' loads, a later poll has seen 'toy' again.
        publish(tmp_path, 1, name="zz-sentinel")
        wait_for(lambda: any("loaded model 'zz-sentinel'" in line for line in logs), "the sentinel model")
        assert len(failures()) == 1  # not retried while unchanged
        assert client.status() == [(1, "AVAILABLE"), (9, "END")]  # END with its load error, as TF Serving reports it

        shutil.rmtree(model_dir / "9")
        publish(tmp_path, 9)
        wait_for(lambda: client.status() == [(1, "END"), (9, "AVAILABLE")], "version 9 replacing version 1")
        check_top_k(client.top_k({"user_id": USERS, "age": AGES}), version=9)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_unavailable_until_the_server_is_up(publish, tmp_path):
    """Nothing listens yet: without retries the call fails fast with UNAVAILABLE; with retries it
    succeeds once a server comes up on that port."""
    publish(tmp_path, 1)
    target = f"127.0.0.1:{free_port()}"
    with RetrievalClient(target, NAME, retries=0, timeout_s=30) as client, pytest.raises(ServingError) as caught:
        started = time.monotonic()
        client.status()
    assert caught.value.code() == Code.UNAVAILABLE and time.monotonic() - started < 10

    server = ModelServer(str(tmp_path), grpc_port=int(target.rsplit(":", 1)[1]), log=lambda line: None)
    later = threading.Timer(0.5, server.start)
    with RetrievalClient(target, NAME, retries=10, backoff_s=0.05, timeout_s=30) as client:
        later.start()
        try:
            check_top_k(client.top_k({"user_id": USERS, "age": AGES}), version=1)
        finally:
            later.join()
            server.stop()


def http(url, body=None):
    """(status, JSON reply) of a GET, or of a POST when ``body`` is given (bytes sent as they are)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, data=data), timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_rest_answers_like_grpc(publish, tmp_path):
    """Row and columnar REST requests give gRPC's results; bad requests get 400/404 with the reason."""
    publish(tmp_path, 1)
    with running(tmp_path, rest_port=0) as (server, client, logs):
        url = f"http://127.0.0.1:{server.rest_port}/v1/models/{NAME}"
        top = client.top_k({"user_id": USERS, "age": AGES})
        b64 = base64.b64encode(b"u2").decode()
        status, rows = http(url + ":predict", {"instances": [{"user_id": "u1", "age": 1.0},
                                                             {"user_id": {"b64": b64}, "age": 2}]})
        assert status == 200, rows
        assert [row["item_ids"] for row in rows["predictions"]] == top.item_ids.tolist()
        np.testing.assert_allclose([row["scores"] for row in rows["predictions"]], top.scores)
        status, columns = http(url + "/versions/1:predict", {"inputs": {"user_id": USERS, "age": AGES}})
        assert status == 200, columns
        assert columns["outputs"]["item_ids"] == top.item_ids.tolist()
        np.testing.assert_allclose(columns["outputs"]["scores"], top.scores)
        status, meta = http(url + ":predict", {"signature_name": "metadata", "inputs": {}})
        assert status == 200 and json.loads(meta["outputs"]) == {"version": 1, "k": K}
        status, reply = http(url + ":predict", {"signature_name": "item_embedding", "instances": ["abc", "de"]})
        assert status == 200 and reply == {"predictions": [[3.0, 1.0], [2.0, 1.0]]}  # one input, one output: bare

        status, reply = http(url + ":predict", {"instances": [{"user_id": "u1"}]})
        assert status == 400 and "missing input 'age'" in reply["error"]
        status, reply = http(url + ":predict", {"inputs": {"user_id": ["u1"], "age": ["old"]}})
        assert status == 400 and "'age'" in reply["error"] and "float32" in reply["error"]
        status, reply = http(url + ":predict", b"{not json")
        assert status == 400 and "not JSON" in reply["error"]
        status, reply = http(f"http://127.0.0.1:{server.rest_port}/v1/models/nope:predict", {"inputs": {}})
        assert status == 404 and "'nope'" in reply["error"]

        status, reply = http(url)
        assert status == 200 and reply["model_version_status"] == [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
        check_top_k(client.top_k({"user_id": USERS, "age": AGES}), version=1)


def test_pinned_version_answers_until_it_leaves_the_policy(publish, tmp_path):
    """With num_versions=2 the older version answers when asked for; once version 3 pushes it out, NOT_FOUND."""
    publish(tmp_path, 1)
    publish(tmp_path, 2)
    with running(tmp_path, num_versions=2) as (server, client, logs):
        assert client.status() == [(1, "AVAILABLE"), (2, "AVAILABLE")]
        check_top_k(client.top_k({"user_id": USERS, "age": AGES}, version=1), version=1)
        check_top_k(client.top_k({"user_id": USERS, "age": AGES}), version=2)
        publish(tmp_path, 3)
        wait_for(lambda: client.status() == [(1, "END"), (2, "AVAILABLE"), (3, "AVAILABLE")], "version 1 to leave")
        with pytest.raises(ServingError) as caught:
            client.top_k({"user_id": USERS, "age": AGES}, version=1)
        assert caught.value.code() == Code.NOT_FOUND and "loaded versions: 2, 3" in caught.value.details()
        check_top_k(client.top_k({"user_id": USERS, "age": AGES}, version=2), version=2)
        check_top_k(client.top_k({"user_id": USERS, "age": AGES}), version=3)


def test_models_config_is_a_valid_model_server_config():
    """serving/models.config parses as TF Serving's ModelServerConfig and serves the latest version only."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "serving", "models.config")
    with open(path) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("tfrec_towers", "/models/tfrec_towers", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1


class History(tf.Module):
    """A signature with a second open dimension (a right-padded history), which the batch limit alone
    does not bound: only the byte budget does."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string)])
    def lengths(self, history):
        return {"lengths": tf.reduce_sum(tf.cast(tf.strings.length(history) > 0, tf.int32), axis=1)}


def declared(dtype, shape, **values):
    """A TensorProto that declares ``shape`` but carries only ``values`` (TensorFlow repeats the last one)."""
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum, **values)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape)
    return proto


def predict_request(name, signature="", **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = name, signature
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    return request


def raw_post(port, path, body=b"", content_length=None):
    """(status, JSON reply) of a POST written by hand, so the Content-Length header can lie."""
    length = len(body) if content_length is None else content_length
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body)
        reply = b""
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_tiny_requests_declaring_huge_tensors_leave_server_memory_flat(publish, tmp_path):
    """Issue 9: a ~200-byte Predict declaring [200000000] elements made the server allocate ~1.5 GB.
    The real server (``tfrec-towers serve`` in a subprocess) checks declared dtype, shape, batch limit
    and byte budget before building anything, naming the input; REST caps the body (413), refuses deep
    JSON and a non-numeric Content-Length (400, no traceback). Its peak RSS grows by < 100 MB."""
    publish(tmp_path, 1)
    staging = tmp_path / "hist" / ".tmp-1"
    tf.saved_model.save(History(), str(staging), signatures={"serving_default": History().lengths})
    os.rename(staging, tmp_path / "hist" / "1")
    body_limit = 256 << 10
    u, x = dict(string_val=[b"u"]), dict(string_val=[b"x"])
    bombs = [  # (model, signature, inputs, code, what the message must name)
        ("toy", "", dict(user_id=declared(tf.string, [1], **u),  # the request: 193 bytes
                         age=declared(tf.int64, [200_000_000], int64_val=[1])), ["'age'", "float32", "int64"]),
        ("toy", "", dict(user_id=declared(tf.string, [20_000_000], **u),
                         age=declared(tf.float32, [20_000_000], float_val=[1.0])),
         ["batch of 20000000", "max_batch_size 1000"]),  # the default
        ("toy", "score", dict(user_id=declared(tf.string, [1], **u), item_id=declared(tf.string, [1, 5_000_000], **x)),
         ["'item_id'", "must have shape [None]", "[1, 5000000]"]),
        ("hist", "", dict(history=declared(tf.string, [1, 10_000_000], **x)),
         ["'history'", "max_request_bytes", "[1, 10000000]"]),
        ("hist", "", dict(history=declared(tf.string, [-1, 3], **x)), ["'history'", "negative dimension"]),
    ]
    with serve_in_subprocess(tmp_path, "--rest-port", 0, "--max-rest-body-bytes", body_limit) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        rest = f"/v1/models/{NAME}:predict"

        def answer_normally():
            splat = predict_request(NAME, user_id=declared(tf.string, [3], **u),  # compact, honest: 3 rows
                                    age=declared(tf.float32, [3], float_val=[1.0]))
            assert stub.Predict(splat, timeout=30).outputs["scores"].tensor_shape.dim[0].size == 3
            history = tf.make_tensor_proto(np.array([[b"a", b""], [b"b", b"c"]], dtype=object))
            assert tf.make_ndarray(stub.Predict(predict_request("hist", history=history), timeout=30)
                                   .outputs["lengths"]).tolist() == [1, 2]
            status, reply = raw_post(server.rest_port, rest, json.dumps({"inputs": {"user_id": USERS,
                                                                                  "age": AGES}}).encode())
            assert status == 200 and len(reply["outputs"]["item_ids"]) == 2, reply

        answer_normally()
        reset = server.reset_peak_memory()
        before = server.memory_kb("VmRSS" if reset else "VmHWM")

        def send(bomb):
            model, signature, inputs, words = bomb
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(predict_request(model, signature, **inputs), timeout=60)
            return caught.value, words

        with futures.ThreadPoolExecutor(2) as pool:  # two at a time, as in the issue
            for error, words in pool.map(send, [b for bomb in bombs for b in (bomb, bomb)]):
                assert error.code() == Code.INVALID_ARGUMENT, error
                assert all(w in error.details() for w in words), (words, error.details())

        deep = b'{"inputs": {"user_id": ' + b"[" * 100_000 + b"]" * 100_000 + b', "age": [1.0]}}'
        status, reply = raw_post(server.rest_port, rest, deep)
        assert status == 400 and "nested too deeply" in reply["error"], (status, reply)
        status, reply = raw_post(server.rest_port, rest, b"{}", content_length="abc")
        assert status == 400 and "Content-Length" in reply["error"], (status, reply)
        status, reply = raw_post(server.rest_port, rest, b"[" + b"1," * (body_limit // 2) + b"1]")
        assert status == 413 and f"max_rest_body_bytes {body_limit}" in reply["error"], (status, reply)
        status, reply = raw_post(server.rest_port, rest, b"{}", content_length=10 ** 12)  # declared, never sent
        assert status == 413 and "max_rest_body_bytes" in reply["error"], (status, reply)

        grown_mb = (server.memory_kb("VmHWM") - before) / 1024
        print(f"server peak RSS grew by {grown_mb:.1f} MB ({'since a reset' if reset else 'over its previous peak'})")
        answer_normally()
    assert grown_mb < 100, f"peak RSS grew by {grown_mb:.0f} MB"
    assert server.returncode == 0 and "Traceback" not in server.output(), server.output()[-5000:]
