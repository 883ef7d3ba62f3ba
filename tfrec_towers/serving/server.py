"""A local model server that speaks TensorFlow Serving's gRPC (and optionally REST) API.

It serves TF Serving's layout: every directory ``BASE/NAME`` is a model, its integer-named children
holding a ``saved_model.pb`` are versions (``.tmp-*`` staging directories and anything else are
ignored). A background thread polls the layout; the policy is TF Serving's ``latest {num_versions: N}``.
A new version replays its warm-up file (``assets.extra/tf_serving_warmup_requests``, as TF Serving
does) before it takes traffic.
Clients written against TF Serving's public API (``tfrec_towers.serving.client``) work unchanged
against either. Unlike stock TF Serving it imports ScaNN's custom ops, so ``scann`` exports load.
"""
import base64
import contextlib
import gc
import http.server
import json
import math
import os
import re
import sys
import threading
import time
from concurrent import futures
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)

from tfrec_towers.export.versions import MAX_WARMUP_RECORDS, WARMUP_FILE

DEFAULT_SIGNATURE = "serving_default"
METADATA_ASSET = os.path.join("assets", "tfrec_towers.json")
METADATA_FIELDS = ("signature_def", "tfrec_towers")
#: gRPC's receive cap: the largest request message the server reads at all.
MAX_MESSAGE_BYTES = 64 << 20
#: Default budget for one request's inputs once decoded, checked on the declared shapes before any
#: tensor is built. A TensorProto may declare far more elements than it carries (the last value is
#: repeated), so a 200-byte message could otherwise make the server allocate gigabytes. Numbers decode
#: to about their wire size, so the message cap is a budget every honest request fits.
MAX_REQUEST_BYTES = 64 << 20
#: Default cap on a REST body (413 above it). ``json.loads`` holds up to ~20x the body in Python objects
#: before anything can be checked, so the body size is the only bound on that memory: 16 MiB admits a
#: 10,000-row batch (the default max batch) of ~1.6 KB JSON rows and keeps one parse under ~350 MB.
MAX_REST_BODY_BYTES = 16 << 20
#: JSON deeper than this gets 400: it bounds the recursion of decoding, and no signature takes tensors of
#: anywhere near that rank (rows, a ``{"b64"}`` object and a named input add three levels).
MAX_JSON_DEPTH = 64
#: What one string element costs once decoded, besides its bytes: a numpy object pointer (8) and a
#: TensorFlow tstring (24), rounded up for the list ``tf.make_ndarray`` builds on the way.
STRING_ELEMENT_BYTES = 40
#: A body over the cap is read and thrown away up to this much after the 413 is sent, so that the
#: client's unread data does not reset the connection before it reads the answer.
_DRAIN_BYTES = 1 << 20
_StatusCode = grpc.StatusCode
_CODE_OF_TF_ERROR = {code.value[0]: code for code in grpc.StatusCode}  # TF's error codes are gRPC's
_HTTP_STATUS = {_StatusCode.INVALID_ARGUMENT: 400, _StatusCode.NOT_FOUND: 404}
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                        r"(?::(?P<verb>\w+))?$")
_AVAILABLE, _END = get_model_status_pb2.ModelVersionStatus.AVAILABLE, get_model_status_pb2.ModelVersionStatus.END


class RequestError(Exception):
    """A request the server rejects: the gRPC status code, a message for the client and, where the
    code's usual HTTP status does not fit (413), the HTTP status of the REST answer."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: Optional[int] = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.http_status = http_status or _HTTP_STATUS.get(code, 500)


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)


def import_custom_ops(log=print) -> None:
    """Register the custom ops an export may use before any SavedModel loads.

    A ``scann`` export holds ``Scann>*`` ops: without ``import scann`` loading it fails with "Op type
    not registered". tensorflow-text ops are registered the same way. Both are optional installs.
    """
    for module in ("scann", "tensorflow_text"):
        try:
            __import__(module)
        except ImportError:
            log(f"{module} is not installed: exports that use its ops will fail to load")


def _fingerprint(version_dir: str, pb_stat: os.stat_result) -> Tuple[int, ...]:
    """What identifies a version directory's contents: a failed version is retried only if this changes."""
    st = os.stat(version_dir)
    return st.st_ino, st.st_mtime_ns, pb_stat.st_ino, pb_stat.st_mtime_ns, pb_stat.st_size


def _scan_versions(model_dir: str) -> Dict[int, Tuple[int, ...]]:
    """Complete versions under BASE/NAME: integer-named directories that hold a saved_model.pb."""
    found = {}
    for entry in os.scandir(model_dir):
        if entry.name.isascii() and entry.name.isdigit() and entry.is_dir():
            try:
                found[int(entry.name)] = _fingerprint(entry.path, os.stat(os.path.join(entry.path, "saved_model.pb")))
            except FileNotFoundError:  # not (yet) a SavedModel, or removed while we looked
                continue
    return found


@contextlib.contextmanager
def _one_collection() -> Iterator[None]:
    """Load a version with automatic garbage collection off, then collect the whole heap once and
    freeze what survives (``gc.freeze``).

    A full collection walks every tracked object, ~400K per loaded export (0.75 s on 2 CPUs), holding
    the interpreter: the load's allocations used to trigger such collections during the load and again
    soon after the swap, stalling every request for up to a second. Frozen, the loaded models are no
    longer walked by collections while serving. The cyclic garbage a retired (frozen) version leaves
    is reclaimed here, at the next load: at most the versions retired since the last load wait for it.
    Only the poll thread loads (``start`` loads before starting it), so these never overlap.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        gc.enable()


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _one_line(error: BaseException, limit: int = 500) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit] + " ..."


class _Version:
    """One loaded version. Reference-counted (under the server's lock): a version that leaves the
    policy is only forgotten by the server; the poll thread drops its TF objects once its last request
    has ended, so a swap never fails or blocks a request that already holds it."""

    def __init__(self, model: str, number: int, path: str):
        self.model, self.number, self.path = model, number, path
        self.loaded = tf.saved_model.load(path)
        self.signatures = {name: self.loaded.signatures[name] for name in self.loaded.signatures}
        # The dry lookup: every signature's inputs and outputs resolve now, not on the first request.
        self.input_specs = {name: fn.structured_input_signature[1] for name, fn in self.signatures.items()}
        self.output_names = {name: sorted(fn.structured_outputs) for name, fn in self.signatures.items()}
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            meta_graph = saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs[0]
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap(signature_def=meta_graph.signature_def)
        self.info = _read_text(os.path.join(path, METADATA_ASSET))
        self.refs = 0

    def signature(self, name: str):
        if name not in self.signatures:
            raise _not_found(f"model {self.model!r} version {self.number} has no signature "
                             f"{name!r}; it has: {', '.join(sorted(self.signatures))}")
        return self.signatures[name]

    def free(self) -> None:
        self.loaded = self.signatures = self.input_specs = self.output_names = None


class _Model:
    def __init__(self, name: str):
        self.name = name
        self.versions: Dict[int, _Version] = {}  # served now
        self.failed: Dict[int, Tuple[int, ...]] = {}  # version -> fingerprint of the directory that failed
        self.ended: set = set()  # versions unloaded since start, reported as END


class ModelServer:
    """Serves every model under ``base_dir`` over gRPC on ``host:grpc_port`` (and REST on ``rest_port``).

    Ports given as 0 pick free ones; after ``start()`` the attributes ``grpc_port`` / ``rest_port`` hold
    the bound ports. ``start()`` loads synchronously, so it returns with the latest versions available.

    Limits, each checked before the memory it guards is allocated: ``max_batch_size`` rows per request
    and ``max_request_bytes`` of decoded inputs (both on the shapes and dtypes a request declares),
    ``max_rest_body_bytes`` per REST body (413), JSON nested at most ``MAX_JSON_DEPTH`` deep.
    """

    def __init__(self, base_dir: str, host: str = "127.0.0.1", grpc_port: int = 8500, rest_port: Optional[int] = None,
                 poll_interval_s: float = 1.0, max_batch_size: int = 10000, num_versions: int = 1, log=print,
                 max_request_bytes: int = MAX_REQUEST_BYTES, max_rest_body_bytes: int = MAX_REST_BODY_BYTES):
        if num_versions < 1:
            raise ValueError(f"num_versions must be >= 1, got {num_versions}")
        for what, value in (("max_batch_size", max_batch_size), ("max_request_bytes", max_request_bytes),
                            ("max_rest_body_bytes", max_rest_body_bytes)):
            if value < 1:
                raise ValueError(f"{what} must be >= 1, got {value}")
        self.base_dir = os.path.abspath(base_dir)
        self.host, self.grpc_port, self.rest_port = host, grpc_port, rest_port
        self.poll_interval_s, self.max_batch_size, self.num_versions = poll_interval_s, max_batch_size, num_versions
        self.max_request_bytes, self.max_rest_body_bytes = max_request_bytes, max_rest_body_bytes
        self._log = log
        self._lock = threading.Lock()
        self._models: Dict[str, _Model] = {}
        self._retired: List[_Version] = []  # out of the policy, freed once idle (``_reap``)
        self._stopping, self._stopped, self._stop_lock = threading.Event(), threading.Event(), threading.Lock()
        self._grpc = self._rest = self._poller = None
        self._last_poll_error = None

    @property
    def target(self) -> str:
        """``host:port`` of the gRPC endpoint, for ``RetrievalClient(target=...)``."""
        return f"{self.host}:{self.grpc_port}"

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> "ModelServer":
        if self._grpc is not None:
            raise RuntimeError("server already started")
        if not os.path.isdir(self.base_dir):
            raise FileNotFoundError(f"model base directory {self.base_dir} does not exist")
        import_custom_ops(self._log)
        try:
            self._sync()
            self._grpc = self._start_grpc()
            if self.rest_port is not None:
                self._rest = self._start_rest()
        except BaseException:
            self.stop()  # e.g. the REST port is taken: release what did start
            raise
        self._poller = threading.Thread(target=self._poll_loop, name="model-server-poll", daemon=True)
        self._poller.start()
        rest = f", REST on {self.host}:{self.rest_port}" if self._rest else ""
        self._log(f"serving {self.base_dir}: gRPC on {self.target}{rest}")
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        """Stop polling and serving (in-flight requests get ``grace`` seconds), then unload everything."""
        with self._stop_lock:  # a signal handler and serve_forever's cleanup may both call it
            if self._stopped.is_set():
                return
            self._stopping.set()
            if self._poller is not None:
                self._poller.join()
            if self._grpc is not None:
                self._grpc.stop(grace).wait()
            if self._rest is not None:
                self._rest.shutdown()
                self._rest.server_close()
            for name in list(self._models):
                self._drop_model(name)
            self._reap()
            gc.unfreeze()  # an embedded server leaves the collector as it found it (see _one_collection)
            self._stopped.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until ``stop()`` has finished (or ``timeout``); True when stopped."""
        return self._stopped.wait(timeout)

    def serve_forever(self) -> None:
        """Start if needed and serve until ``stop()`` is called or Ctrl-C (the CLI's ``serve``)."""
        if self._grpc is None:
            self.start()
        try:
            self.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start_grpc(self) -> grpc.Server:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.so_reuseport", 0)]  # a port in use must fail here, not be shared silently
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), server)
        try:
            port = server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        except RuntimeError as e:
            raise OSError(f"cannot bind gRPC to {self.host}:{self.grpc_port}: {e}") from None
        if not port:
            raise OSError(f"cannot bind gRPC to {self.host}:{self.grpc_port}")
        self.grpc_port = port
        server.start()
        return server

    def _start_rest(self) -> http.server.ThreadingHTTPServer:
        server = _RestServer((self.host, self.rest_port), _RestHandler)
        server.daemon_threads = True
        server.model_server = self
        self.rest_port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="model-server-rest", daemon=True).start()
        return server

    # ---- version management -------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self.poll_interval_s):
            try:
                self._sync()
                self._last_poll_error = None
            except Exception as e:  # e.g. the base directory vanished: keep serving what is loaded
                message = f"polling {self.base_dir} failed: {_one_line(e)}"
                if message != self._last_poll_error:  # once per distinct problem, not once per poll
                    self._log(message)
                self._last_poll_error = message

    def _sync(self) -> None:
        """One poll: every model in name order, then forget models whose directory is gone."""
        names = sorted(e.name for e in os.scandir(self.base_dir) if e.is_dir() and not e.name.startswith("."))
        for name in names:
            self._sync_model(name)
        for name in set(self._models) - set(names):
            self._drop_model(name)
        self._reap()

    def _sync_model(self, name: str) -> None:
        """Load the versions the policy newly wants (newest first), then retire those it no longer wants.

        Loading comes first so that a swap never leaves a gap: the old version answers until the new
        one is fully loaded. A version that fails stays out of the policy (the previous one keeps
        serving) until its directory changes.
        """
        with self._lock:
            model = self._models.setdefault(name, _Model(name))
        found = _scan_versions(os.path.join(self.base_dir, name))
        model.failed = {v: fp for v, fp in model.failed.items() if found.get(v) == fp}
        errors = []
        while True:
            wanted = sorted(v for v in found if v not in model.failed)[-self.num_versions:]
            missing = [v for v in reversed(wanted) if v not in model.versions]
            if not missing:
                break
            error = self._load(model, missing[0])
            if error:
                model.failed[missing[0]] = found[missing[0]]
                errors.append(error)
        for number in set(model.versions) - set(wanted):
            self._retire(model, number)
        served = ", ".join(map(str, sorted(model.versions))) or "none"
        for error in errors:
            self._log(f"{error}; serving version(s): {served}; retried when that directory changes")

    def _load(self, model: _Model, number: int) -> Optional[str]:
        """Load one version, replay its warm-up requests and make it servable; on failure return the
        message (and serve nothing new)."""
        path = os.path.join(self.base_dir, model.name, str(number))
        try:
            with _one_collection():
                version = _Version(model.name, number, path)
            warmed = self._warm_up(version)
        except Exception as e:
            return f"failed to load model {model.name!r} version {number} from {path}: {_one_line(e)}"
        with self._lock:
            model.versions[number] = version
            model.ended.discard(number)
        self._log(f"loaded model {model.name!r} version {number} from {path} "
                  f"(signatures: {', '.join(sorted(version.signatures))}){warmed}")
        return None

    def _warm_up(self, version: _Version) -> str:
        """Replay the version's TF Serving warm-up file (``WARMUP_FILE``), if it has one, before it takes
        traffic: TensorFlow initializes a signature's function lazily, on its first call, which took
        seconds where a warm call takes milliseconds. As in TF Serving, a record that fails (or more than
        ``MAX_WARMUP_RECORDS``) fails the load. Returns the note for the log line."""
        path = os.path.join(version.path, WARMUP_FILE)
        if not os.path.exists(path):
            return ""
        # The file comes with the model, not from a client: the batch limit (a policy for clients,
        # perhaps below the export's 8-row records) does not apply; the byte budget still does.
        limits, started, count = self._limits._replace(max_batch_size=sys.maxsize), time.monotonic(), 0
        for count, record in enumerate(tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS + 1), 1):
            where = f"warm-up record {count} of {path}"
            if count > MAX_WARMUP_RECORDS:
                raise ValueError(f"{path} holds more than {MAX_WARMUP_RECORDS} records (TF Serving's limit)")
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{where} is a {log.WhichOneof('log_type')}; this server replays only predict_log")
            request = log.predict_log.request
            try:
                self._call(version, request.model_spec, _proto_decoder(request.inputs, limits), request.output_filter,
                           limits)
            except RequestError as e:
                raise ValueError(f"{where}: {e.message}") from None
        return f", warmed up with {count} requests in {time.monotonic() - started:.1f} s"

    def _retire(self, model: _Model, number: int) -> None:
        with self._lock:
            self._retired.append(model.versions.pop(number))
            model.ended.add(number)
        self._reap()

    def _reap(self) -> None:
        """Free the retired versions whose last request has ended (at retirement, else at a later poll).

        Never in a request's thread: tearing a model down holds the interpreter for tens of ms, which
        the request that happened to end last would otherwise add to its own latency.
        """
        with self._lock:
            idle = [version for version in self._retired if version.refs == 0]
            self._retired = [version for version in self._retired if version.refs]
        for version in idle:
            self._free(version)

    def _drop_model(self, name: str) -> None:
        model = self._models[name]
        for number in list(model.versions):
            self._retire(model, number)
        with self._lock:
            del self._models[name]

    def _free(self, version: _Version) -> None:
        version.free()
        self._log(f"unloaded model {version.model!r} version {version.number}")

    @contextlib.contextmanager
    def _lease(self, spec: model_pb2.ModelSpec) -> Iterator[_Version]:
        """The version a request asks for (the latest without one), held for the request's duration."""
        with self._lock:
            version = self._pick(spec)
            version.refs += 1
        try:
            yield version
        finally:
            with self._lock:
                version.refs -= 1

    def _pick(self, spec: model_pb2.ModelSpec) -> _Version:
        model = self._models.get(spec.name)
        if model is None:
            raise _not_found(f"model {spec.name!r} not found under {self.base_dir}; "
                             f"models: {', '.join(sorted(self._models)) or 'none'}")
        if spec.version_label:
            raise _invalid(f"version labels are not supported (got {spec.version_label!r}); ask for a version number")
        if not model.versions:
            raise _not_found(f"model {spec.name!r} has no loaded version")
        number = spec.version.value if spec.HasField("version") else max(model.versions)
        if number not in model.versions:
            raise _not_found(f"model {spec.name!r} version {number} is not loaded; "
                             f"loaded versions: {', '.join(map(str, sorted(model.versions)))}")
        return model.versions[number]

    # ---- requests (shared by gRPC and REST) ---------------------------------------------------------

    def _run(self, spec: model_pb2.ModelSpec, decode: Callable, output_filter=()) -> Tuple[int, str, Dict]:
        """Run one signature: ``decode(input_specs, where)`` gives the request's numpy inputs.

        Returns (version that answered, signature name, numpy outputs). Every rejection is a RequestError.
        """
        with self._lease(spec) as version:
            return self._call(version, spec, decode, output_filter)

    def _call(self, version: _Version, spec: model_pb2.ModelSpec, decode: Callable, output_filter=(),
              limits: Optional["_Limits"] = None) -> Tuple[int, str, Dict]:
        """``_run`` on a given version (also one not serving yet: warm-up), under ``limits`` (the server's)."""
        name = spec.signature_name or DEFAULT_SIGNATURE
        fn = version.signature(name)
        where = f"model {spec.name!r} version {version.number} signature {name!r}"
        specs, output_names = version.input_specs[name], version.output_names[name]
        unknown = sorted(set(output_filter) - set(output_names))
        if unknown:
            raise _invalid(f"{where}: output_filter names unknown output {unknown[0]!r}; "
                           f"outputs: {', '.join(output_names)}")
        feeds = _validate(decode(specs, where), specs, where, limits or self._limits)
        try:
            outputs = fn(**feeds)
        except tf.errors.OpError as e:
            raise RequestError(_CODE_OF_TF_ERROR.get(e.error_code, _StatusCode.INTERNAL), f"{where}: {e.message}")
        keep = set(output_filter) or set(outputs)
        return version.number, name, {k: v.numpy() for k, v in outputs.items() if k in keep}

    @property
    def _limits(self) -> "_Limits":
        return _Limits(self.max_batch_size, self.max_request_bytes)

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        number, name, outputs = self._run(request.model_spec, _proto_decoder(request.inputs, self._limits),
                                          request.output_filter)
        response = predict_pb2.PredictResponse()
        response.model_spec.name, response.model_spec.signature_name = request.model_spec.name, name
        response.model_spec.version.value = number
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest):
        fields = list(request.metadata_field)
        bad = [f for f in fields if f not in METADATA_FIELDS]
        if not fields or bad:
            raise _invalid(f"unsupported metadata_field {bad[0] if bad else '(none)'!r}; "
                           f"supported: {', '.join(METADATA_FIELDS)}")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        with self._lease(request.model_spec) as version:
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = version.number
            for field in fields:
                if field == "signature_def":
                    response.metadata[field].Pack(version.signature_defs)
                elif version.info is None:
                    raise _not_found(f"model {version.model!r} version {version.number} has "
                                     f"no {METADATA_ASSET} in {version.path}")
                else:
                    response.metadata[field].Pack(wrappers_pb2.StringValue(value=version.info))
        return response

    def model_status(self, spec: model_pb2.ModelSpec) -> Dict[int, int]:
        """{version: ModelVersionStatus.State} of what is loaded (AVAILABLE) or was unloaded (END)."""
        with self._lock:
            model = self._models.get(spec.name)
            states = {n: _END for n in model.ended} if model else {}
            states.update({n: _AVAILABLE for n in (model.versions if model else ())})
            models = ", ".join(sorted(self._models)) or "none"
        if not states:
            raise _not_found(f"model {spec.name!r} has no versions under {self.base_dir}; models: {models}")
        if spec.HasField("version"):
            if spec.version.value not in states:
                raise _not_found(f"model {spec.name!r} has no version {spec.version.value}; "
                                 f"versions: {', '.join(map(str, sorted(states)))}")
            states = {spec.version.value: states[spec.version.value]}
        return dict(sorted(states.items()))

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest):
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state in self.model_status(request.model_spec).items():
            response.model_version_status.add(version=number, state=state).status.error_message = ""
        return response


# ---- validation ------------------------------------------------------------------------------------------


class _Limits(NamedTuple):
    max_batch_size: int
    max_request_bytes: int


def _ndarray(proto, name: str, where: str) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except Exception as e:
        raise _invalid(f"{where}: input {name!r} is not a valid TensorProto: {_one_line(e)}") from None


def _dtype_of(array: np.ndarray) -> tf.DType:
    return tf.string if array.dtype.kind in "OSU" else tf.as_dtype(array.dtype)


def _shape_text(shape: tf.TensorShape) -> str:
    return str(shape.as_list()) if shape.rank is not None else "any shape"


def _describe(specs: Dict[str, tf.TensorSpec]) -> str:
    return ", ".join(f"{n} ({s.dtype.name} {_shape_text(s.shape)})" for n, s in sorted(specs.items())) or "none"


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):,.1f} MiB"


def _decoded_bytes(dtype: tf.DType, num_elements: int, payload: int = 0) -> int:
    """Memory an input takes once decoded: numbers their item size each, strings ``STRING_ELEMENT_BYTES``
    each plus ``payload`` (their bytes, which a TensorProto's repeated last value does not multiply)."""
    return num_elements * (STRING_ELEMENT_BYTES if dtype == tf.string else dtype.size) + payload


def _check_names(names, specs: Dict[str, tf.TensorSpec], where: str) -> None:
    missing, unknown = sorted(set(specs) - set(names)), sorted(set(names) - set(specs))
    if missing:
        raise _invalid(f"{where}: missing input {', '.join(map(repr, missing))}; it takes: {_describe(specs)}")
    if unknown:
        raise _invalid(f"{where}: unknown input {', '.join(map(repr, unknown))}; it takes: {_describe(specs)}")


def _check_input(name: str, dtype: tf.DType, shape: List[int], spec: tf.TensorSpec, where: str) -> None:
    if dtype != spec.dtype:
        raise _invalid(f"{where}: input {name!r} must be {spec.dtype.name}, got {dtype.name}")
    if not spec.shape.is_compatible_with(shape):
        raise _invalid(f"{where}: input {name!r} must have shape {_shape_text(spec.shape)}, got {list(shape)}")


def _check_request(shapes: Dict[str, List[int]], sizes: Dict[str, int], specs: Dict[str, tf.TensorSpec],
                   where: str, limits: _Limits) -> None:
    """The checks over all inputs: one batch size, at most ``max_batch_size`` rows, at most
    ``max_request_bytes`` decoded (``sizes``: each input's decoded bytes).

    Inputs whose signature leaves the first dimension open (the batch) must agree on it; an input with
    a fixed first dimension (``score``'s one user, shape [1]) is checked by its shape alone.
    """
    batches = {name: shape[0] for name, shape in sorted(shapes.items())
               if shape and specs[name].shape.rank and specs[name].shape[0] is None}
    if len(set(batches.values())) > 1:
        raise _invalid(f"{where}: inputs have different batch sizes: "
                       + ", ".join(f"{name}={size}" for name, size in batches.items()))
    if batches and max(batches.values()) > limits.max_batch_size:
        name = max(batches, key=batches.get)
        raise _invalid(f"{where}: input {name!r}: batch of {batches[name]} rows exceeds the server's "
                       f"max_batch_size {limits.max_batch_size}")
    total = sum(sizes.values())
    if total > limits.max_request_bytes:
        name = max(sizes, key=sizes.get)
        raise _invalid(f"{where}: the inputs would take {_mib(total)} once decoded ({name!r} alone "
                       f"{_mib(sizes[name])}: shape {list(shapes[name])}), over the server's max_request_bytes "
                       f"{limits.max_request_bytes} ({_mib(limits.max_request_bytes)})")


def _declared(proto, name: str, where: str) -> Tuple[tf.DType, List[int], int]:
    """(dtype, shape, decoded bytes) a TensorProto declares, read without building the tensor."""
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        raise _invalid(f"{where}: input {name!r} has an unknown dtype ({proto.dtype})") from None
    if proto.tensor_shape.unknown_rank:
        raise _invalid(f"{where}: input {name!r} must declare its shape")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise _invalid(f"{where}: input {name!r} has a negative dimension: {shape}")
    payload = sum(map(len, proto.string_val)) if dtype == tf.string else 0
    return dtype, shape, _decoded_bytes(dtype, math.prod(shape), payload)


def _proto_decoder(protos, limits: _Limits) -> Callable:
    """``decode`` for ``_call`` from a request's TensorProtos: names, dtypes, shapes, the batch limit
    and the byte budget are checked on what each proto declares before any array is built."""

    def decode(specs: Dict[str, tf.TensorSpec], where: str) -> Dict[str, np.ndarray]:
        _check_names(protos, specs, where)
        shapes, sizes = {}, {}
        for name, proto in sorted(protos.items()):
            dtype, shapes[name], sizes[name] = _declared(proto, name, where)
            _check_input(name, dtype, shapes[name], specs[name], where)
        _check_request(shapes, sizes, specs, where, limits)
        return {name: _ndarray(proto, name, where) for name, proto in protos.items()}

    return decode


def _array_bytes(array: np.ndarray) -> int:
    if array.dtype.kind not in "OSU":
        return array.nbytes
    return _decoded_bytes(tf.string, array.size, sum(len(x) for x in array.flat if isinstance(x, (bytes, str))))


def _validate(inputs: Dict[str, np.ndarray], specs: Dict[str, tf.TensorSpec], where: str,
              limits: _Limits) -> Dict[str, tf.Tensor]:
    """Check a request's inputs against the signature and the limits, naming the input and expected vs
    got; the tensors to feed."""
    _check_names(inputs, specs, where)
    for name, spec in sorted(specs.items()):
        _check_input(name, _dtype_of(inputs[name]), list(inputs[name].shape), spec, where)
    _check_request({name: list(array.shape) for name, array in inputs.items()},
                   {name: _array_bytes(array) for name, array in inputs.items()}, specs, where, limits)
    return {name: tf.convert_to_tensor(inputs[name], spec.dtype) for name, spec in specs.items()}


# ---- gRPC ------------------------------------------------------------------------------------------------


def _answer(context: grpc.ServicerContext, handler: Callable, request):
    """Map a handler's rejection or crash to a gRPC status; the server keeps serving either way."""
    try:
        return handler(request)
    except RequestError as e:
        context.abort(e.code, e.message)
    except Exception as e:
        context.abort(_StatusCode.INTERNAL, _one_line(e, 2000))


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference stay UNIMPLEMENTED."""

    def __init__(self, server: ModelServer):
        self._server = server

    def Predict(self, request, context):
        return _answer(context, self._server.predict, request)

    def GetModelMetadata(self, request, context):
        return _answer(context, self._server.get_model_metadata, request)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server: ModelServer):
        self._server = server

    def GetModelStatus(self, request, context):
        return _answer(context, self._server.get_model_status, request)


# ---- REST (TF Serving's JSON API) ---------------------------------------------------------------------


def _from_json(value):
    """JSON strings -> UTF-8 bytes, ``{"b64": ...}`` -> bytes, lists recursively; numbers unchanged."""
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"], validate=True)
    return value


def _leaves(value) -> Iterator:
    if isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _json_array(value, spec: Optional[tf.TensorSpec], name: str, where: str) -> np.ndarray:
    """One input's JSON value as numpy; numbers take the signature's dtype when that loses no kind
    (JSON cannot say float32), anything else is left for ``_validate`` to report."""
    try:
        data = _from_json(value)
    except (TypeError, ValueError) as e:  # a "b64" value that is not base64
        raise _invalid(f"{where}: input {name!r} holds invalid base64: {e}") from None
    leaves = list(_leaves(data))
    if all(isinstance(x, bytes) for x in leaves) and (leaves or spec is None or spec.dtype == tf.string):
        array = np.array(data, dtype=object)
        ragged = any(isinstance(x, list) for x in array.flat)
    elif all(isinstance(x, (bool, int, float)) for x in leaves):
        try:
            array, ragged = np.asarray(data, dtype=None if leaves else spec.dtype.as_numpy_dtype), False
        except ValueError:
            ragged = True
    else:
        raise _invalid(f"{where}: input {name!r} must hold only strings or only numbers")
    if ragged:
        raise _invalid(f"{where}: input {name!r} is ragged: every row must have the same length")
    if spec is not None and spec.dtype != tf.string and array.dtype.kind in "biuf":
        if np.can_cast(array.dtype, spec.dtype.as_numpy_dtype, "same_kind"):
            array = array.astype(spec.dtype.as_numpy_dtype)
    return array


def _single_input(specs: Dict, where: str, what: str) -> str:
    if len(specs) != 1:
        raise _invalid(f"{where}: {what} must be an object naming the inputs ({', '.join(sorted(specs))})")
    return next(iter(specs))


def _decode_rows(instances, specs: Dict, where: str) -> Dict[str, np.ndarray]:
    """Row format: a list of ``{input: value}`` objects, or of bare values for a one-input signature."""
    if not isinstance(instances, list) or not instances:
        raise _invalid(f"{where}: 'instances' must be a non-empty list")
    if all(isinstance(row, dict) and set(row) != {"b64"} for row in instances):
        names = set(instances[0])
        for i, row in enumerate(instances):
            if set(row) != names:
                raise _invalid(f"{where}: instance {i} has inputs {sorted(row)}, instance 0 has {sorted(names)}")
        columns = {name: [row[name] for row in instances] for name in names}
    else:
        columns = {_single_input(specs, where, "each instance"): instances}
    return {name: _json_array(value, specs.get(name), name, where) for name, value in columns.items()}


def _decode_columns(inputs, specs: Dict, where: str) -> Dict[str, np.ndarray]:
    """Columnar format: ``{input: batched value}``, or the bare value for a one-input signature."""
    if not (isinstance(inputs, dict) and set(inputs) != {"b64"}):
        inputs = {_single_input(specs, where, "'inputs'"): inputs}
    return {name: _json_array(value, specs.get(name), name, where) for name, value in inputs.items()}


def _to_json(value):
    """Numpy -> JSON values; bytes become text when they are UTF-8, else ``{"b64": ...}``."""
    value = np.asarray(value).tolist()
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def _rows_json(outputs: Dict[str, np.ndarray], where: str):
    if len(outputs) == 1:
        return _to_json(next(iter(outputs.values())))
    sizes = {value.shape[0] if value.ndim else None for value in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise _invalid(f"{where}: outputs do not share a batch size, so they cannot be returned as rows; "
                       f"send 'inputs' (columnar format) instead of 'instances'")
    return [{k: _to_json(v[i]) for k, v in outputs.items()} for i in range(sizes.pop())]


def _rest_target(path: str) -> Tuple[model_pb2.ModelSpec, Optional[str]]:
    match = _REST_PATH.match(path.split("?", 1)[0])
    if not match:
        raise _not_found(f"unknown path {path}; use /v1/models/NAME[/versions/N][:predict]")
    spec = model_pb2.ModelSpec(name=match["name"], version_label=match["label"] or "")
    if match["version"]:
        spec.version.value = int(match["version"])
    return spec, match["verb"]


def _json_depth(value, limit: int) -> int:
    """How deep ``value`` nests (without recursing), counting only up to ``limit + 1``."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _parse_json(body: bytes):
    """The request body as JSON, no deeper than ``MAX_JSON_DEPTH``."""
    too_deep = _invalid(f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    try:
        request = json.loads(body)
    except RecursionError:  # the C parser stops at the interpreter's recursion limit
        raise too_deep from None
    except ValueError as e:
        raise _invalid(f"request body is not JSON: {e}") from None
    if _json_depth(request, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise too_deep
    return request


def _content_length(value: Optional[str], limit: int) -> int:
    """A POST's Content-Length: 400 unless a non-negative integer, 413 over ``limit``."""
    text = (value or "0").strip()
    if not (text.isascii() and text.isdigit()):
        raise _invalid(f"Content-Length must be a non-negative integer, got {value[:40]!r}")
    length = int(text) if len(text) <= 18 else 10 ** 18  # int() refuses over 4,300 digits
    if length > limit:
        shown = text if len(text) <= 18 else f"over 10^18 ({len(text)} digits)"
        raise RequestError(_StatusCode.INVALID_ARGUMENT, f"request body of {shown} bytes is over the server's "
                           f"max_rest_body_bytes {limit} ({_mib(limit)})", http_status=413)
    return length


def _rest_predict(server: ModelServer, path: str, body: bytes) -> Dict:
    spec, verb = _rest_target(path)
    if verb != "predict":
        raise _not_found(f"POST {path}: only :predict is served")
    request = _parse_json(body)
    if not isinstance(request, dict) or ("instances" in request) == ("inputs" in request):
        raise _invalid("request body must be a JSON object with exactly one of 'instances' (row format) "
                       "or 'inputs' (columnar format)")
    spec.signature_name = request.get("signature_name") or ""
    rows = "instances" in request
    payload = request["instances" if rows else "inputs"]
    decode = _decode_rows if rows else _decode_columns
    number, name, outputs = server._run(spec, lambda specs, where: decode(payload, specs, where))
    if rows:
        return {"predictions": _rows_json(outputs, f"model {spec.name!r} version {number} signature {name!r}")}
    return {"outputs": _to_json(next(iter(outputs.values()))) if len(outputs) == 1
            else {k: _to_json(v) for k, v in outputs.items()}}


def _rest_status(server: ModelServer, path: str) -> Dict:
    spec, verb = _rest_target(path)
    if verb is not None:
        raise _not_found(f"GET {path}: use POST for :{verb}")
    states = server.model_status(spec)
    return {"model_version_status": [
        {"version": str(n), "state": get_model_status_pb2.ModelVersionStatus.State.Name(s),
         "status": {"error_code": "OK", "error_message": ""}} for n, s in states.items()]}


class _RestServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """One log line (e.g. a client that hung up mid-answer) instead of socketserver's traceback."""
        self.model_server._log(f"REST request from {client_address[0]} failed: {_one_line(sys.exc_info()[1])}")


class _RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST endpoints, answered by the same request path (and validation) as gRPC."""

    #: Seconds a client may stall while sending: a slow client cannot hold a thread forever.
    timeout = 60

    def do_GET(self):
        self._reply(lambda: _rest_status(self.server.model_server, self.path))

    def do_POST(self):
        server = self.server.model_server
        try:  # the body is read only once its declared size is known to be within the limit
            length = _content_length(self.headers.get("Content-Length"), server.max_rest_body_bytes)
        except RequestError as e:
            self._send(e.http_status, {"error": e.message})
            if e.http_status == 413:
                self._discard()
            return
        body = self.rfile.read(length)
        self._reply(lambda: _rest_predict(server, self.path, body))

    def _discard(self) -> None:
        """Read and drop up to ``_DRAIN_BYTES`` of a refused body (bounded in time and memory)."""
        self.close_connection = True
        self.connection.settimeout(1.0)
        left = _DRAIN_BYTES
        with contextlib.suppress(OSError):
            while left > 0:
                chunk = self.rfile.read1(min(left, 64 << 10))
                if not chunk:
                    break
                left -= len(chunk)

    def _reply(self, handler: Callable) -> None:
        try:
            status, payload = 200, handler()
        except RequestError as e:
            status, payload = e.http_status, {"error": e.message}
        except Exception as e:
            status, payload = 500, {"error": _one_line(e, 2000)}
        self._send(status, payload)

    def _send(self, status: int, payload: Dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def log_message(self, format, *args):  # one log line per load/unload, none per request
        pass

