"""A local model server that speaks TensorFlow Serving's gRPC (and optionally REST) API.

It serves TF Serving's layout: every directory ``BASE/NAME`` is a model, its integer-named children
holding a ``saved_model.pb`` are versions (``.tmp-*`` staging directories and anything else are
ignored). A background thread polls the layout; the policy is TF Serving's ``latest {num_versions: N}``.
Clients written against TF Serving's public API (``tfrec_towers.serving.client``) work unchanged
against either. Unlike stock TF Serving it imports ScaNN's custom ops, so ``scann`` exports load.
"""
import base64
import contextlib
import http.server
import json
import os
import re
import threading
from concurrent import futures
from typing import Callable, Dict, Iterator, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

DEFAULT_SIGNATURE = "serving_default"
METADATA_ASSET = os.path.join("assets", "tfrec_towers.json")
METADATA_FIELDS = ("signature_def", "tfrec_towers")
MAX_MESSAGE_BYTES = 64 << 20
_StatusCode = grpc.StatusCode
_CODE_OF_TF_ERROR = {code.value[0]: code for code in grpc.StatusCode}  # TF's error codes are gRPC's
_HTTP_STATUS = {_StatusCode.INVALID_ARGUMENT: 400, _StatusCode.NOT_FOUND: 404}
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                        r"(?::(?P<verb>\w+))?$")
_AVAILABLE, _END = get_model_status_pb2.ModelVersionStatus.AVAILABLE, get_model_status_pb2.ModelVersionStatus.END


class RequestError(Exception):
    """A request the server rejects: the gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


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
    policy is only forgotten by the server; its TF objects are dropped when its last request ends, so
    a swap never fails or blocks a request that already holds it."""

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
        self.refs, self.retired = 0, False

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
    """

    def __init__(self, base_dir: str, host: str = "127.0.0.1", grpc_port: int = 8500, rest_port: Optional[int] = None,
                 poll_interval_s: float = 1.0, max_batch_size: int = 10000, num_versions: int = 1, log=print):
        if num_versions < 1:
            raise ValueError(f"num_versions must be >= 1, got {num_versions}")
        self.base_dir = os.path.abspath(base_dir)
        self.host, self.grpc_port, self.rest_port = host, grpc_port, rest_port
        self.poll_interval_s, self.max_batch_size, self.num_versions = poll_interval_s, max_batch_size, num_versions
        self._log = log
        self._lock = threading.Lock()
        self._models: Dict[str, _Model] = {}
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
        server = http.server.ThreadingHTTPServer((self.host, self.rest_port), _RestHandler)
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
        """Load one version and make it servable; on failure return the message (and serve nothing new)."""
        path = os.path.join(self.base_dir, model.name, str(number))
        try:
            version = _Version(model.name, number, path)
        except Exception as e:
            return f"failed to load model {model.name!r} version {number} from {path}: {_one_line(e)}"
        with self._lock:
            model.versions[number] = version
            model.ended.discard(number)
        self._log(f"loaded model {model.name!r} version {number} from {path} "
                  f"(signatures: {', '.join(sorted(version.signatures))})")
        return None

    def _retire(self, model: _Model, number: int) -> None:
        with self._lock:
            version = model.versions.pop(number)
            model.ended.add(number)
            version.retired = True
            idle = version.refs == 0
        if idle:
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
                idle = version.retired and version.refs == 0
            if idle:
                self._free(version)

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
            name = spec.signature_name or DEFAULT_SIGNATURE
            fn = version.signature(name)
            where = f"model {spec.name!r} version {version.number} signature {name!r}"
            specs, output_names = version.input_specs[name], version.output_names[name]
            unknown = sorted(set(output_filter) - set(output_names))
            if unknown:
                raise _invalid(f"{where}: output_filter names unknown output {unknown[0]!r}; "
                               f"outputs: {', '.join(output_names)}")
            feeds = _validate(decode(specs, where), specs, where, self.max_batch_size)
            try:
                outputs = fn(**feeds)
            except tf.errors.OpError as e:
                raise RequestError(_CODE_OF_TF_ERROR.get(e.error_code, _StatusCode.INTERNAL), f"{where}: {e.message}")
            keep = set(output_filter) or set(outputs)
            return version.number, name, {k: v.numpy() for k, v in outputs.items() if k in keep}

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        def decode(specs, where):
            return {name: _ndarray(proto, name, where) for name, proto in request.inputs.items()}

        number, name, outputs = self._run(request.model_spec, decode, request.output_filter)
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


def _validate(inputs: Dict[str, np.ndarray], specs: Dict[str, tf.TensorSpec], where: str,
              max_batch_size: int) -> Dict[str, tf.Tensor]:
    """Check a request's inputs against the signature, naming the input and expected vs got.

    Inputs whose signature leaves the first dimension open (the batch) must agree on it; an input with
    a fixed first dimension (``score``'s one user, shape [1]) is checked by its shape alone.
    """
    missing, unknown = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
    if missing:
        raise _invalid(f"{where}: missing input {', '.join(map(repr, missing))}; it takes: {_describe(specs)}")
    if unknown:
        raise _invalid(f"{where}: unknown input {', '.join(map(repr, unknown))}; it takes: {_describe(specs)}")
    for name, spec in sorted(specs.items()):
        array = inputs[name]
        if _dtype_of(array) != spec.dtype:
            raise _invalid(f"{where}: input {name!r} must be {spec.dtype.name}, got {_dtype_of(array).name}")
        if not spec.shape.is_compatible_with(array.shape):
            raise _invalid(f"{where}: input {name!r} must have shape {_shape_text(spec.shape)}, "
                           f"got {list(array.shape)}")
    batches = {name: array.shape[0] for name, array in sorted(inputs.items())
               if array.ndim and specs[name].shape.rank and specs[name].shape[0] is None}
    if len(set(batches.values())) > 1:
        raise _invalid(f"{where}: inputs have different batch sizes: "
                       + ", ".join(f"{name}={size}" for name, size in batches.items()))
    biggest = max(batches.values(), default=0)
    if biggest > max_batch_size:
        raise _invalid(f"{where}: batch of {biggest} rows exceeds the server's max_batch_size {max_batch_size}")
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


def _rest_predict(server: ModelServer, path: str, body: bytes) -> Dict:
    spec, verb = _rest_target(path)
    if verb != "predict":
        raise _not_found(f"POST {path}: only :predict is served")
    try:
        request = json.loads(body)
    except ValueError as e:
        raise _invalid(f"request body is not JSON: {e}") from None
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


class _RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST endpoints, answered by the same request path (and validation) as gRPC."""

    def do_GET(self):
        self._reply(lambda: _rest_status(self.server.model_server, self.path))

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply(lambda: _rest_predict(self.server.model_server, self.path, body))

    def _reply(self, handler: Callable) -> None:
        try:
            status, payload = 200, handler()
        except RequestError as e:
            status, payload = _HTTP_STATUS.get(e.code, 500), {"error": e.message}
        except Exception as e:
            status, payload = 500, {"error": _one_line(e, 2000)}
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # one log line per load/unload, none per request
        pass
