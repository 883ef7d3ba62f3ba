"""Issue 23, the server's part: nothing a user or operator hands ``tfrec-towers serve`` may crash it,
exhaust its memory or answer with a traceback. Real SavedModels, real gRPC/HTTP on 127.0.0.1; what may
take the process down runs it in a subprocess and checks its exit status and output."""
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import grpc
import numpy as np
import pytest
import tensorflow as tf
from cli_helpers import ServeProcess, cli, serve_in_subprocess, subprocess_env
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c  # an independent CRC-32C
from tensorflow.python.data.experimental.ops.testing import sleep as sleep_dataset
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_log_pb2, prediction_service_pb2_grpc)

from tfrec_towers.export import layout
from tfrec_towers.serving import ModelServer

Code = grpc.StatusCode


class Toy(tf.Module):
    """``serving_default``: scores that encode the version, so an answer shows which version gave it."""

    def __init__(self, version: int):
        super().__init__()
        self.v = version

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.float32)])
    def top_k(self, user_id, age):
        return {"scores": 100.0 * self.v + age[:, None] + tf.zeros([1, 3]),
                "user": tf.strings.join([user_id, f"-v{self.v}"])}


class Slow(tf.Module):
    """``serving_default`` answers after about ``max(seconds)`` (sleeping, not spinning)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def wait(self, seconds):
        # The reduce pulls twice (the element, then the end of the dataset), and each pull sleeps.
        micros = tf.cast(tf.reduce_max(seconds) * 0.5e6, tf.int64)
        slept = tf.data.Dataset.from_tensors(tf.constant(1, tf.int64)).apply(sleep_dataset(micros))
        done = slept.reduce(tf.constant(0, tf.int64), lambda total, x: total + x)
        return {"waited": seconds * tf.cast(done, tf.float32)}


class Catalog(tf.Module):
    """Top-k with an exact re-rank, as the ``portable`` index does: per row a [2000] score vector and a
    [100, 64] shortlist of embeddings (~0.05 MB), so 10,000 rows take a few hundred MB while they run."""

    def __init__(self):
        super().__init__()
        self.items = tf.Variable(np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def top_k(self, user):
        query = tf.gather(self.items, user % 2000)
        shortlist = tf.math.top_k(tf.matmul(query, self.items, transpose_b=True), 100).indices
        exact = tf.einsum("bd,bkd->bk", query, tf.gather(self.items, shortlist))
        best = tf.math.top_k(exact, 10)
        return {"scores": best.values, "items": tf.gather(shortlist, best.indices, batch_dims=1)}


def toy_request(name="toy", users=("u1", "u2"), ages=(1.0, 2.0), version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(list(users)))
    request.inputs["age"].CopyFrom(tf.make_tensor_proto(list(ages), tf.float32))
    return request


def warmup_record(request) -> bytes:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(request)
    return log.SerializeToString()


def write_records(path, records) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def framed_header(length: int) -> bytes:
    """A TFRecord header declaring ``length`` bytes, with the right checksum: TensorFlow's reader trusts it."""
    size = struct.pack("<Q", length)
    return size + struct.pack("<I", masked_crc32c(size))


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """SavedModels saved once per module: toy versions 1 and 2 (with a good warm-up file), slow, catalog."""
    root = tmp_path_factory.mktemp("templates")
    for version in (1, 2):
        toy = Toy(version)
        tf.saved_model.save(toy, str(root / f"toy{version}"), signatures={"serving_default": toy.top_k})
        write_records(root / f"toy{version}" / layout.WARMUP_FILE, [warmup_record(toy_request())] * 2)
    slow = Slow()
    tf.saved_model.save(slow, str(root / "slow"), signatures={"serving_default": slow.wait})
    catalog = Catalog()
    tf.saved_model.save(catalog, str(root / "catalog"), signatures={"serving_default": catalog.top_k})
    return root


def publish(template, base, name, version):
    """Copy ``template`` to ``base/name/version`` the way an exporter publishes: staged, then renamed."""
    staging = base / name / f".tmp-{version}"
    shutil.copytree(template, staging)
    os.rename(staging, base / name / str(version))
    return base / name / str(version)


def model_status(port, name):
    """[(version, state name, error code name, error message)] from GetModelStatus."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    return [(s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
             Code(next(c for c in Code if c.value[0] == s.status.error_code)).name, s.status.error_message)
            for s in reply.model_version_status]


def predict(port, request, timeout=60):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)


def raw_http(port, head, body=b"", shut_write=False):
    """(status, JSON reply) of a request written by hand: ``head`` is its request line and headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(("\r\n".join(head + ["Host: 127.0.0.1", "", ""])).encode() + body)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def answering_version(port) -> int:
    reply = predict(port, toy_request())
    assert tf.make_ndarray(reply.outputs["user"]).tolist()[0].decode().endswith(f"-v{reply.model_spec.version.value}")
    return reply.model_spec.version.value


# ---- case 1: a warm-up file that declares a huge record ----------------------------------------------------


def test_a_warmup_record_declaring_a_terabyte_is_refused_and_the_previous_version_keeps_serving(templates, tmp_path):
    """Version 2 is version 1's copy with a warm-up record whose header declares 2^40 bytes (its checksum
    right): it took the whole server down (SIGSEGV) when polled, and again at every restart. Now the
    version is refused, logged naming the file and the record, reported END with DATA_LOSS by
    GetModelStatus, and version 1 keeps serving, across a restart too."""
    publish(templates / "toy1", tmp_path, "toy", 1)
    staging = tmp_path / "toy" / ".tmp-2"
    shutil.copytree(tmp_path / "toy" / "1", staging)
    (staging / layout.WARMUP_FILE).write_bytes(framed_header(1 << 40) + b"x" * 64)
    bad_file = str(tmp_path / "toy" / "2" / layout.WARMUP_FILE)
    with serve_in_subprocess(tmp_path, "--poll-seconds", "0.2") as server:
        assert answering_version(server.grpc_port) == 1
        os.rename(staging, tmp_path / "toy" / "2")
        server.wait_for_line("failed to load model 'toy' version 2", timeout=120)
        (line,) = [line for line in server.lines if "failed to load model 'toy' version 2" in line]
        assert bad_file in line and "record 1 " in line and "1,099,511,627,776 bytes" in line, line
        assert "serving version(s): 1" in line
        assert answering_version(server.grpc_port) == 1
        status = model_status(server.grpc_port, "toy")
        assert [s[:3] for s in status] == [(1, "AVAILABLE", "OK"), (2, "END", "DATA_LOSS")], status
        assert bad_file in status[1][3] and "record 1 " in status[1][3]
    assert server.returncode == 0 and "Traceback" not in server.output(), server.output()[-3000:]

    with serve_in_subprocess(tmp_path) as server:  # a restart on that base: version 2 is refused at once
        assert answering_version(server.grpc_port) == 1
        status = model_status(server.grpc_port, "toy")
        assert [s[:3] for s in status] == [(1, "AVAILABLE", "OK"), (2, "END", "DATA_LOSS")], status
    assert server.returncode == 0 and "Traceback" not in server.output(), server.output()[-3000:]


def test_warmup_framing_is_checked_record_by_record(tmp_path):
    """``check_record_framing`` reads only the 12-byte headers: it counts a good file's records as
    TensorFlow does, and names file, record and byte offset of each kind of bad framing."""
    from tfrec_towers.serving.warmup import MalformedRecordFile, check_record_framing

    good = tmp_path / "good"
    write_records(good, [b"a" * 10, b"", b"b" * 300])
    data = good.read_bytes()
    assert check_record_framing(str(good), max_record_bytes=300, max_records=3) == 3
    assert len(list(tf.data.TFRecordDataset(str(good)))) == 3
    second = 12 + 10 + 4  # byte offset of record 2

    def bad(name, content, words, **limits):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(MalformedRecordFile) as caught:
            check_record_framing(str(path), **{"max_record_bytes": 1000, "max_records": 10, **limits})
        assert all(w in str(caught.value) for w in [str(path)] + words), str(caught.value)

    bad("huge", data[:second] + framed_header(1 << 40) + b"x" * 8, ["record 2 (byte 26)", "1,099,511,627,776 bytes"])
    bad("over-limit", data, ["record 3", "300 bytes, over the limit of 299"], max_record_bytes=299)
    bad("too-many", data, ["more than 2 records"], max_records=2)
    bad("cut-header", data[:second + 5], ["record 2 (byte 26)", "cut short (5 of 12 bytes)"])
    bad("cut-data", data[:-1], ["record 3", "truncated"])
    flipped = bytearray(data)
    flipped[second] ^= 0x01  # record 2 now declares 1 byte, its checksum says 0
    bad("bad-length-checksum", bytes(flipped), ["record 2", "checksum does not match"])
    bad("not-tfrecord", b'{"json": "instead"}', ["record 1", "checksum does not match"])
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert check_record_framing(str(empty), max_record_bytes=1, max_records=1) == 0


# ---- case 7: SIGTERM with requests in flight --------------------------------------------------------------


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(templates, tmp_path):
    """Four gRPC and one REST request of 1.5 s each (the sleeps take turns: ~7.5 s for all) are in flight
    when SIGTERM arrives: all are answered (the gRPC server used to be stopped without a grace period:
    "UNAVAILABLE: Cancelling all calls"), new requests are refused meanwhile, and the process exits 0
    once they are done, well before the grace period ends."""
    publish(templates / "slow", tmp_path, "slow", 1)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["seconds"].CopyFrom(tf.make_tensor_proto([1.5], tf.float32))
    with serve_in_subprocess(tmp_path, "--rest-port", 0, "--grace-period", 60) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        quick = predict_pb2.PredictRequest()
        quick.CopyFrom(request)
        quick.inputs["seconds"].CopyFrom(tf.make_tensor_proto([0.01], tf.float32))
        stub.Predict(quick, timeout=60)  # the channel is up and the signature warm

        def over_grpc():
            reply = stub.Predict(request, timeout=120)
            return time.monotonic(), tf.make_ndarray(reply.outputs["waited"]).tolist()

        def over_rest():
            body = json.dumps({"instances": [1.5]}).encode()
            status, reply = raw_http(server.rest_port, ["POST /v1/models/slow:predict HTTP/1.1",
                                                        f"Content-Length: {len(body)}"], body)
            return time.monotonic(), (status, reply)

        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            calls = [pool.submit(over_grpc) for _ in range(4)] + [pool.submit(over_rest)]
            time.sleep(0.5)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as refused:  # stopped accepting: refused, not queued
                stub.Predict(quick, timeout=30)
            assert refused.value.code() == Code.UNAVAILABLE, refused.value
            answers = [call.result() for call in calls]
        server.returncode = server.proc.wait(timeout=60)
        exited = time.monotonic()
    print("answered after SIGTERM (s):", [round(a[0] - signalled, 1) for a in answers],
          "exited after", round(exited - signalled, 1))
    for finished, value in answers[:4]:
        assert value == [1.5] and finished > signalled
    finished, (status, reply) = answers[4]
    assert status == 200 and reply == {"predictions": [1.5]} and finished > signalled
    assert exited - signalled < 45, "waited for the grace period although every request had ended"
    assert server.returncode == 0 and "Traceback" not in server.output(), server.output()[-3000:]


def test_a_request_that_outlasts_the_grace_period_is_cancelled_and_the_exit_does_not_wait(templates, tmp_path):
    """With --grace-period 1, a 30-second request in flight at SIGTERM is cancelled after a second and the
    process exits 0 then, without waiting for the signature run to end (Python would, at exit)."""
    publish(templates / "slow", tmp_path, "slow", 1)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["seconds"].CopyFrom(tf.make_tensor_proto([30.0], tf.float32))
    with serve_in_subprocess(tmp_path, "--grace-period", 1) as server, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(predict, server.grpc_port, request)
        time.sleep(1.0)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.returncode = server.proc.wait(timeout=60)
        exited = time.monotonic() - signalled
        with pytest.raises(grpc.RpcError) as caught:
            call.result()
    assert caught.value.code() in (Code.CANCELLED, Code.UNAVAILABLE), caught.value
    assert exited < 10, f"exited {exited:.1f} s after SIGTERM"
    assert server.returncode == 0 and "Traceback" not in server.output(), server.output()[-3000:]
    assert "still running at the end of the 1 s grace period were cancelled" in server.output()


# ---- case 8: ports in use, and a host that is not loopback -------------------------------------------------


def run_serve(*args, timeout=180):
    return subprocess.run(cli("serve", *args), env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def test_a_port_in_use_is_reported_before_any_model_loads(templates, tmp_path):
    """A taken --port or --rest-port: "port N is in use" and exit 2 at once, before any model is loaded
    (it came as a traceback, after every model had loaded)."""
    publish(templates / "toy1", tmp_path, "toy", 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags, what in ((["--port", port], "gRPC"), (["--port", 0, "--rest-port", port], "REST")):
            done = run_serve(tmp_path, *flags)
            assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
            assert f"port {port} is in use ({what}" in done.stderr, done.stderr
            assert "Traceback" not in done.stdout + done.stderr and "loaded model" not in done.stdout, done.stdout


@pytest.mark.parametrize("when", ["just after the serving line", "while loading"])
def test_serve_forever_stops_cleanly_on_a_signal_at_any_moment(templates, tmp_path, when):
    """SIGINT right after the "serving" line (what a supervisor that waits for it does) or during the
    load: serve_forever returns, the server stopped, no KeyboardInterrupt escapes (it used to, when the
    signal came before its handlers were installed: the CLI then died of SIGINT)."""
    publish(templates / "toy1", tmp_path, "toy", 1)
    lines = []

    class Signalled(ModelServer):
        def start(self):
            if when == "while loading":
                os.kill(os.getpid(), signal.SIGINT)
            out = super().start()
            if when != "while loading":
                os.kill(os.getpid(), signal.SIGINT)
            return out

    server = Signalled(str(tmp_path), grpc_port=0, log=lines.append)
    previous = signal.getsignal(signal.SIGINT)
    assert server.serve_forever() is True
    assert server.wait(0) and signal.getsignal(signal.SIGINT) is previous
    assert any(line.startswith("serving ") for line in lines) == (when != "while loading"), lines


def test_a_host_other_than_loopback_is_warned_about(templates, tmp_path):
    """--host 0.0.0.0 serves, with a warning that nothing authenticates its clients."""
    from tfrec_towers.serving.server import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.1.2.3", "example.com"]))
    publish(templates / "toy1", tmp_path, "toy", 1)
    proc = subprocess.Popen(cli("serve", tmp_path, "--host", "0.0.0.0", "--port", 0), env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = ServeProcess(proc)
    try:
        server.wait_for_line("serving ", timeout=180)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    server._reader.join(timeout=10)
    warning = [line for line in server.lines if "WARNING" in line]
    assert warning and "0.0.0.0" in warning[0] and "no authentication" in warning[0], server.output()[-3000:]


# ---- case 9: REST body framing ----------------------------------------------------------------------------


def chunked(body: bytes, size: int, extension: bytes = b"", trailer: bytes = b"") -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in parts) + b"0\r\n" + trailer + b"\r\n"


def test_rest_reads_the_body_as_framed_and_refuses_ambiguous_framing(templates, tmp_path):
    """Two Content-Length headers that disagree: 400 (the first used to win); a chunked body is read
    (it used to be read as empty: "not JSON"), within --max-rest-body-bytes (413); another transfer
    coding 501; Content-Length beside Transfer-Encoding 400; a POST with neither 411."""
    publish(templates / "toy1", tmp_path, "toy", 1)
    body = json.dumps({"inputs": {"user_id": ["u1", "u2"], "age": [1.0, 2.0]}}).encode()
    post = "POST /v1/models/toy:predict HTTP/1.1"
    with ModelServer(str(tmp_path), grpc_port=0, rest_port=0, log=lambda line: None,
                     max_rest_body_bytes=4096) as server:
        port = server.rest_port
        status, plain = raw_http(port, [post, f"Content-Length: {len(body)}"], body)
        assert status == 200 and plain["outputs"]["user"] == ["u1-v1", "u2-v1"], plain
        assert raw_http(port, [post, f"Content-Length: {len(body)}", f"Content-Length: {len(body)}"], body) \
            == (200, plain)  # repeated, but the same: one length
        status, reply = raw_http(port, [post, f"Content-Length: {len(body)}", f"Content-Length: {len(body) + 5}"],
                                 body + b"     ")
        assert status == 400 and "Content-Length headers that disagree" in reply["error"], (status, reply)

        for framed in (chunked(body, 16), chunked(body, 7, b";note=1", b"X-Checksum: none\r\n"), chunked(body, 4096)):
            assert raw_http(port, [post, "Transfer-Encoding: chunked"], framed) == (200, plain), framed[:80]
        status, reply = raw_http(port, [post, "Transfer-Encoding: chunked"], chunked(b"[" + b"1," * 3000 + b"1]", 1000))
        assert status == 413 and "max_rest_body_bytes 4096" in reply["error"], (status, reply)
        status, reply = raw_http(port, [post, "Transfer-Encoding: chunked"], b"zz\r\n{}\r\n0\r\n\r\n")
        assert status == 400 and "chunk size 'zz'" in reply["error"], (status, reply)
        status, reply = raw_http(port, [post, "Transfer-Encoding: chunked"], chunked(body, 16)[:40], shut_write=True)
        assert status == 400 and "malformed chunked body" in reply["error"], (status, reply)
        status, reply = raw_http(port, [post, "Transfer-Encoding: gzip, chunked"], chunked(body, 16))
        assert status == 501 and "'gzip, chunked' is not supported" in reply["error"], (status, reply)
        status, reply = raw_http(port, [post, "Transfer-Encoding: chunked", f"Content-Length: {len(body)}"],
                                 chunked(body, 16))
        assert status == 400 and "both Transfer-Encoding and Content-Length" in reply["error"], (status, reply)
        status, reply = raw_http(port, [post], body, shut_write=True)
        assert status == 411 and "Content-Length" in reply["error"], (status, reply)
        assert raw_http(port, [post, f"Content-Length: {len(body)}"], body) == (200, plain)


# ---- case 10: the memory of a large request --------------------------------------------------------------


def test_the_memory_of_a_max_size_request_goes_back_once_it_is_answered(templates, tmp_path):
    """A 10,000-row top-k request (``--max-batch-size 10000``) takes a few hundred MB while it runs; its
    memory used to stay with the server for good (TensorFlow's oneDNN allocator pools every tensor of
    4 KB or more and never shrinks the pool). Now RSS comes back to within 64 MB of where it was."""
    publish(templates / "catalog", tmp_path, "catalog", 1)

    def request(rows):
        r = predict_pb2.PredictRequest()
        r.model_spec.name = "catalog"
        r.inputs["user"].CopyFrom(tf.make_tensor_proto(np.arange(rows, dtype=np.int64)))
        return r

    with serve_in_subprocess(tmp_path, "--max-batch-size", 10_000) as server:
        for _ in range(3):
            predict(server.grpc_port, request(100))
        time.sleep(0.5)
        idle = server.memory_kb("VmRSS")
        reset = server.reset_peak_memory()
        reply = predict(server.grpc_port, request(10_000), timeout=300)
        assert reply.outputs["items"].tensor_shape.dim[0].size == 10_000
        peak = server.memory_kb("VmHWM")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and server.memory_kb("VmRSS") - idle > 64 << 10:
            time.sleep(0.2)
        kept = server.memory_kb("VmRSS") - idle
        print(f"idle {idle >> 10} MB; the 10,000-row request peaked at +{(peak - idle) >> 10} MB "
              f"({(peak - idle) / 10_000:.0f} kB a row); kept afterwards {kept >> 10} MB")
        with pytest.raises(grpc.RpcError) as caught:
            predict(server.grpc_port, request(10_001))
        assert caught.value.code() == Code.INVALID_ARGUMENT and "max_batch_size 10000" in caught.value.details()
    if reset:
        assert peak - idle > 150 << 10, "the request did not take the memory this test is about"
    assert kept < 64 << 10, f"RSS stayed {kept >> 10} MB above its idle level"
    assert server.returncode == 0 and "Traceback" not in server.output(), server.output()[-3000:]
