"""Version management: which versions of which models are served, loaded, leased and freed.

It serves TF Serving's layout (``export/layout.py``): every directory ``BASE/NAME`` is a model, its
integer-named children holding a ``saved_model.pb`` are versions (``.tmp-*`` staging directories and
anything else are ignored). A background thread polls the layout; the policy is TF Serving's
``latest {num_versions: N}``. A new version replays its warm-up file (``layout.WARMUP_FILE``, as TF
Serving does) before it takes traffic, once the file's framing has been checked (``warmup.py``); a
version that fails to load is reported by GetModelStatus as END with its error, and one that leaves the
policy is freed once its last request has ended.
"""
import contextlib
import gc
import os
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, Set, Tuple

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, prediction_log_pb2

from tfrec_towers.export import layout
from tfrec_towers.serving.request import (Limits, RequestError, invalid, not_found, one_line, proto_decoder,
                                           run_signature)
from tfrec_towers.serving.warmup import MalformedRecordFile, check_record_framing


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
    """Complete versions under BASE/NAME (``layout.version_dirs`` that hold a saved_model.pb), fingerprinted."""
    found = {}
    for number, path in layout.version_dirs(model_dir).items():
        try:
            found[number] = _fingerprint(path, os.stat(os.path.join(path, layout.SAVED_MODEL_FILE)))
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
    Only the poll thread loads (``ModelServer.start`` loads before starting it), so these never overlap.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        gc.enable()


def _check_warmup_file(version_dir: str) -> None:
    """Refuse a version whose warm-up file is not well-framed (``warmup.check_record_framing``): at most
    ``layout.MAX_WARMUP_RECORDS`` records (TF Serving's limit), each no larger than the gRPC message cap
    (``layout.MAX_MESSAGE_BYTES``: no client could send a larger request)."""
    path = os.path.join(version_dir, layout.WARMUP_FILE)
    if os.path.exists(path):
        check_record_framing(path, layout.MAX_MESSAGE_BYTES, layout.MAX_WARMUP_RECORDS)


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


class Version:
    """One loaded version. Reference-counted (under the manager's lock): a version that leaves the
    policy is only forgotten by the manager; the poll thread drops its TF objects once its last request
    has ended, so a swap never fails or blocks a request that already holds it."""

    def __init__(self, model: str, number: int, path: str):
        self.model, self.number, self.path = model, number, path
        self.loaded = tf.saved_model.load(path)
        self.signatures = {name: self.loaded.signatures[name] for name in self.loaded.signatures}
        # The dry lookup: every signature's inputs and outputs resolve now, not on the first request.
        self.input_specs = {name: fn.structured_input_signature[1] for name, fn in self.signatures.items()}
        self.output_names = {name: sorted(fn.structured_outputs) for name, fn in self.signatures.items()}
        with open(os.path.join(path, layout.SAVED_MODEL_FILE), "rb") as f:
            meta_graph = saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs[0]
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap(signature_def=meta_graph.signature_def)
        self.info = _read_text(os.path.join(path, layout.METADATA_ASSET))
        self.refs = 0

    def signature(self, name: str):
        if name not in self.signatures:
            raise not_found(f"model {self.model!r} version {self.number} has no signature "
                            f"{name!r}; it has: {', '.join(sorted(self.signatures))}")
        return self.signatures[name]

    def free(self) -> None:
        self.loaded = self.signatures = self.input_specs = self.output_names = None


class _Model:
    def __init__(self, name: str):
        self.name = name
        self.versions: Dict[int, Version] = {}  # served now
        self.failed: Dict[int, Tuple[int, ...]] = {}  # version -> fingerprint of the directory that failed
        self.errors: Dict[int, Tuple[grpc.StatusCode, str]] = {}  # version in ``failed`` -> why (GetModelStatus)
        self.ended: set = set()  # versions unloaded since start, reported as END


class VersionManager:
    """The models and versions served from ``base_dir``: ``sync`` loads what the policy wants (the
    ``num_versions`` latest of each model) and retires the rest, ``start_polling`` repeats that every
    ``poll_interval_s``, ``lease`` hands a request the version it asks for, ``unload_all`` frees everything.

    ``limits`` are the server's, applied to warm-up requests too (less the batch limit, see ``_warm_up``).
    """

    def __init__(self, base_dir: str, num_versions: int, limits: Limits, poll_interval_s: float = 1.0, log=print):
        self.base_dir, self.num_versions, self.limits = base_dir, num_versions, limits
        self.poll_interval_s, self._log = poll_interval_s, log
        self._lock = threading.Lock()
        self._models: Dict[str, _Model] = {}
        self._retired: List[Version] = []  # out of the policy, freed once idle (``_reap``)
        self._stopping = threading.Event()
        self._poller: Optional[threading.Thread] = None
        self._last_poll_error = None

    # ---- polling --------------------------------------------------------------------------------------

    def start_polling(self) -> None:
        self._poller = threading.Thread(target=self._poll_loop, name="model-server-poll", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        """Stop the poll thread, waiting for a load in progress to finish."""
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self.poll_interval_s):
            try:
                self.sync()
                self._last_poll_error = None
            except Exception as e:  # e.g. the base directory vanished: keep serving what is loaded
                message = f"polling {self.base_dir} failed: {one_line(e)}"
                if message != self._last_poll_error:  # once per distinct problem, not once per poll
                    self._log(message)
                self._last_poll_error = message

    def sync(self) -> None:
        """One poll: every model in name order, then forget models whose directory is gone."""
        names = layout.model_names(self.base_dir)
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
        with self._lock:
            model.failed = {v: fp for v, fp in model.failed.items() if found.get(v) == fp}
            model.errors = {v: error for v, error in model.errors.items() if v in model.failed}
        errors = []
        while True:
            wanted = sorted(v for v in found if v not in model.failed)[-self.num_versions:]
            missing = [v for v in reversed(wanted) if v not in model.versions]
            if not missing:
                break
            error = self._load(model, missing[0])
            if error:
                with self._lock:
                    model.failed[missing[0]] = found[missing[0]]
                    model.errors[missing[0]] = error
                errors.append(error[1])
        for number in set(model.versions) - set(wanted):
            self._retire(model, number)
        served = ", ".join(map(str, sorted(model.versions))) or "none"
        for error in errors:
            self._log(f"{error}; serving version(s): {served}; retried when that directory changes")

    # ---- loading and unloading ------------------------------------------------------------------------

    def _load(self, model: _Model, number: int) -> Optional[Tuple[grpc.StatusCode, str]]:
        """Load one version, replay its warm-up requests and make it servable; on failure return the
        status code and message (and serve nothing new).

        The warm-up file's framing is checked first (``warmup.check_record_framing``), before the
        SavedModel loads and before TensorFlow's record reader sees the file.
        """
        path = os.path.join(self.base_dir, model.name, str(number))
        try:
            _check_warmup_file(path)
            with _one_collection():
                version = Version(model.name, number, path)
            warmed = self._warm_up(version)
        except Exception as e:
            if isinstance(e, MalformedRecordFile):
                code = grpc.StatusCode.DATA_LOSS  # as TensorFlow's reader reports a corrupt record
            elif isinstance(e, tf.errors.OpError):
                code = next((c for c in grpc.StatusCode if c.value[0] == e.error_code), grpc.StatusCode.UNKNOWN)
            else:
                code = grpc.StatusCode.UNKNOWN
            return code, f"failed to load model {model.name!r} version {number} from {path}: {one_line(e)}"
        with self._lock:
            model.versions[number] = version
            model.ended.discard(number)
        self._log(f"loaded model {model.name!r} version {number} from {path} "
                  f"(signatures: {', '.join(sorted(version.signatures))}){warmed}")
        return None

    def _warm_up(self, version: Version) -> str:
        """Replay the version's TF Serving warm-up file (``layout.WARMUP_FILE``), if it has one, before it
        takes traffic: TensorFlow initializes a signature's function lazily, on its first call, which took
        seconds where a warm call takes milliseconds. As in TF Serving, a record that fails (or more than
        ``layout.MAX_WARMUP_RECORDS``) fails the load. Returns the note for the log line."""
        path = os.path.join(version.path, layout.WARMUP_FILE)
        if not os.path.exists(path):
            return ""
        # The file comes with the model, not from a client: the batch limit (a policy for clients,
        # perhaps below the export's 8-row records) does not apply; the byte budget still does.
        limits, started, count = self.limits._replace(max_batch_size=sys.maxsize), time.monotonic(), 0
        most = layout.MAX_WARMUP_RECORDS
        for count, record in enumerate(tf.data.TFRecordDataset(path).take(most + 1), 1):
            where = f"warm-up record {count} of {path}"
            if count > most:
                raise ValueError(f"{path} holds more than {most} records (TF Serving's limit)")
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{where} is a {log.WhichOneof('log_type')}; this server replays only predict_log")
            request = log.predict_log.request
            try:
                run_signature(version, request.model_spec, proto_decoder(request.inputs, limits),
                              request.output_filter, limits)
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

    def _free(self, version: Version) -> None:
        version.free()
        self._log(f"unloaded model {version.model!r} version {version.number}")

    def unload_all(self) -> None:
        """Retire and free every version (polling stopped, no request in flight)."""
        for name in list(self._models):
            self._drop_model(name)
        self._reap()
        gc.unfreeze()  # an embedded server leaves the collector as it found it (see _one_collection)

    # ---- what requests see ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, spec: model_pb2.ModelSpec) -> Iterator[Version]:
        """The version a request asks for (the latest without one), held for the request's duration."""
        with self._lock:
            version = self._pick(spec)
            version.refs += 1
        try:
            yield version
        finally:
            with self._lock:
                version.refs -= 1

    def _pick(self, spec: model_pb2.ModelSpec) -> Version:
        model = self._models.get(spec.name)
        if model is None:
            raise not_found(f"model {spec.name!r} not found under {self.base_dir}; "
                            f"models: {', '.join(sorted(self._models)) or 'none'}")
        if spec.version_label:
            raise invalid(f"version labels are not supported (got {spec.version_label!r}); ask for a version number")
        if not model.versions:
            raise not_found(f"model {spec.name!r} has no loaded version")
        number = spec.version.value if spec.HasField("version") else max(model.versions)
        if number not in model.versions:
            raise not_found(f"model {spec.name!r} version {number} is not loaded; "
                            f"loaded versions: {', '.join(map(str, sorted(model.versions)))}")
        return model.versions[number]

    def numbers(self, name: str) -> Tuple[Set[int], Set[int], Dict[int, Tuple[grpc.StatusCode, str]], List[str]]:
        """(versions loaded, versions unloaded since start, {version that failed to load: (code, message)})
        of model ``name``, and every model's name, read together under the lock (GetModelStatus)."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                return set(), set(), {}, sorted(self._models)
            return set(model.versions), set(model.ended), dict(model.errors), sorted(self._models)
