"""A gRPC client for an export of this package, written only against TF Serving's public API.

It therefore works unchanged against a real ``tensorflow_model_server`` and against this package's
``ModelServer``. Every call has a deadline; UNAVAILABLE (server not up yet, restarting, overloaded)
is retried with exponential backoff; every other failure raises ``ServingError`` at once.
"""
import json
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from tfrec_towers.export.layout import ALLOWED_INPUT, EXCLUDE_INPUT, K_INPUT, MAX_MESSAGE_BYTES

__all__ = ["RetrievalClient", "ServingError", "TopK"]


class ServingError(grpc.RpcError):
    """A failed call: ``code()`` is the ``grpc.StatusCode`` and ``details()`` the server's message, as
    on grpc's own errors (so ``except grpc.RpcError`` catches it too)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class TopK(NamedTuple):
    item_ids: np.ndarray  # str [B, K]
    scores: np.ndarray  # float [B, K]
    version: int
    #: Filtered requests only: [B] items in each row (the rest of the row is padding: "" and -inf).
    count: Optional[np.ndarray] = None


def _as_bytes(value) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _to_array(value) -> np.ndarray:
    """A feature value as numpy: text -> bytes objects (DT_STRING); floats -> float32, the dtype of
    this package's float features (JSON-like Python floats would otherwise be float64)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind in "OSU":
        objects = array if isinstance(value, np.ndarray) else np.array(value, dtype=object)  # keeps b"\0" tails
        return np.vectorize(_as_bytes, otypes=[object])(objects)
    return array.astype(np.float32) if array.dtype == np.float64 else array


def _text(array: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda b: b.decode("utf-8"), otypes=[str])(array)


def _batch_size(features: Dict) -> int:
    sizes = {name: len(np.asarray(value)) for name, value in features.items() if np.ndim(value) >= 1}
    if not sizes or len(set(sizes.values())) > 1:
        raise ValueError(f"the query features must share one batch size, got {sizes or 'no batched feature'}")
    return sizes.popitem()[1]


def _k_array(k, batch: int) -> np.ndarray:
    """``k``: an int (every row) or one per row -> int32, each >= 1 (the server checks the export's max-k)."""
    array = np.asarray(k)
    if array.dtype.kind not in "iu" or array.ndim > 1:
        raise ValueError(f"k ({K_INPUT}) must be an integer or one integer per row, got {k!r}")
    if array.ndim == 1 and len(array) != batch:
        raise ValueError(f"k ({K_INPUT}) has {len(array)} values for a batch of {batch} rows: give one per row, "
                         "or one int")
    if array.size and (array.min() < 1 or array.max() > np.iinfo(np.int32).max):
        raise ValueError(f"k ({K_INPUT}) must be >= 1 (and at most the export's max-k), got "
                         f"{array.min() if array.min() < 1 else array.max()}")
    return array.astype(np.int32)


def _id_rows(rows, what: str, batch: Optional[int]) -> np.ndarray:
    """Lists of item IDs (str or bytes), one per row, ragged allowed -> [B, M] bytes right-padded with ""."""
    if not isinstance(rows, (list, tuple, np.ndarray)) or (isinstance(rows, np.ndarray) and rows.ndim == 0):
        raise ValueError(f"{what} must be one list of item IDs per row, got {rows!r:.80}")
    rows = [row.tolist() if isinstance(row, np.ndarray) and row.ndim == 1 else
            list(row) if isinstance(row, tuple) else row for row in rows]
    if batch is not None and len(rows) != batch:
        raise ValueError(f"{what} has {len(rows)} rows for a batch of {batch} rows")
    out = np.full((len(rows), max([len(r) for r in rows if isinstance(r, list)] + [0])), b"", dtype=object)
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise ValueError(f"{what}: row {i} must be a list of item IDs, got {type(row).__name__} {row!r:.80}")
        for j, item in enumerate(row):
            if not isinstance(item, (str, bytes, np.str_, np.bytes_)):
                raise ValueError(f"{what}: row {i} item {j} is {type(item).__name__} {item!r:.40}; item IDs are "
                                 "strings (str or bytes)")
            out[i, j] = _as_bytes(item)
    return out


class RetrievalClient:
    """``RetrievalClient("host:8500", model_name="tfrec_towers")``; usable as a context manager.

    ``channel`` (optional) is an existing ``grpc.Channel`` to use instead of dialing ``target``; it is
    then left open by ``close()``.

    Example (the channel connects on the first request, so this runs without a server; the commented
    calls need ``tfrec-towers serve`` on the port):

    >>> from tfrec_towers.serving import RetrievalClient
    >>> with RetrievalClient("127.0.0.1:8500", model_name="tfrec_towers", timeout_s=1.0) as client:
    ...     print(client.model_name)
    ...     # answer = client.top_k({"user_id": ["42"]}, k=10)  # TopK: item_ids, scores, version
    tfrec_towers
    """

    def __init__(self, target: str = "127.0.0.1:8500", model_name: str = "tfrec_towers", timeout_s: float = 5.0,
                 retries: int = 3, backoff_s: float = 0.1, channel: Optional[grpc.Channel] = None):
        self.model_name, self.timeout_s, self.retries, self.backoff_s = model_name, timeout_s, retries, backoff_s
        self._owns_channel = channel is None
        if channel is None:
            # Reconnect at our own pace: gRPC's default 1 s+ reconnect backoff would make every retry
            # fail fast while the channel waits, even once the server is up.
            backoff_ms = max(1, int(backoff_s * 1000))
            channel = grpc.insecure_channel(target, options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.initial_reconnect_backoff_ms", backoff_ms),
                ("grpc.min_reconnect_backoff_ms", backoff_ms),
                ("grpc.max_reconnect_backoff_ms", max(backoff_ms, 1000))])
        self._channel = channel
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(channel)

    def _call(self, method, request):
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise ServingError(e.code(), e.details()) from None
            time.sleep(self.backoff_s * 2 ** attempt)

    def _spec(self, spec, version: Optional[int], signature_name: str = "") -> None:
        spec.name = self.model_name
        spec.signature_name = signature_name
        if version is not None:
            spec.version.value = version

    def predict(self, inputs: Dict, signature_name: str = "serving_default",
                version: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], int]:
        """Run a signature: ({output: numpy array}, the version that answered)."""
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, version, signature_name)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(_to_array(value)))
        response = self._call(self._predictions.Predict, request)
        outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
        return outputs, response.model_spec.version.value

    def top_k(self, features: Dict, version: Optional[int] = None, k=None, exclude=None, allowed=None) -> TopK:
        """The best items per query row: without ``k``/``exclude``/``allowed``, ``serving_default`` (the
        export's k over the whole catalog); with them, the filtered signatures:

        * ``k``: an int, or one per row (1 <= k <= the export's max-k);
        * ``exclude``: one list of item IDs per row (ragged is fine: padded with ""), e.g. the user's history;
          unknown IDs are ignored;
        * ``allowed``: one list of item IDs for every row, or one list per row: only those are candidates.

        A filtered answer is max-k wide: ``count[b]`` items in row b (k_b, fewer only when fewer candidates
        are left), then padding ("" and -inf). Bad arguments raise ValueError naming them, before any call.
        """
        if k is None and exclude is None and allowed is None:
            outputs, answered = self.predict(features, version=version)
            return TopK(_text(outputs["item_ids"]), outputs["scores"], answered)
        if k is None:
            raise ValueError(f"k ({K_INPUT}) is required with exclude or allowed")
        batch = _batch_size(features)
        inputs = dict(features)
        inputs[K_INPUT] = _k_array(k, batch)
        inputs[EXCLUDE_INPUT] = _id_rows([[]] * batch if exclude is None else exclude,
                                         f"exclude ({EXCLUDE_INPUT})", batch)
        signature = "filtered"
        if allowed is not None:
            shared = not isinstance(allowed, (str, bytes)) and all(
                isinstance(a, (str, bytes, np.str_, np.bytes_)) for a in allowed)
            rows = _id_rows([allowed] if shared else allowed, f"allowed ({ALLOWED_INPUT})", None if shared else batch)
            inputs[ALLOWED_INPUT] = rows[0] if shared else rows
            signature = "filtered_allowed"
        outputs, answered = self.predict(inputs, signature, version)
        return TopK(_text(outputs["item_ids"]), outputs["scores"], answered, outputs["count"])

    def user_embedding(self, features: Dict, version: Optional[int] = None) -> Tuple[np.ndarray, int]:
        outputs, answered = self.predict(features, "user_embedding", version)
        return outputs["embedding"], answered

    def item_embedding(self, features: Dict, version: Optional[int] = None) -> Tuple[np.ndarray, int]:
        outputs, answered = self.predict(features, "item_embedding", version)
        return outputs["embedding"], answered

    def score(self, user_features: Dict, item_features: Dict, version: Optional[int] = None) -> Tuple[np.ndarray, int]:
        """Scores [N] of N items for one user (one signature call, so both come from one version)."""
        both = set(user_features) & set(item_features)
        if both:
            raise ValueError(f"features given as both user and item features: {sorted(both)}")
        outputs, answered = self.predict({**user_features, **item_features}, "score", version)
        return outputs["scores"], answered

    def metadata(self, version: Optional[int] = None) -> Dict:
        """The export's metadata JSON, from its ``metadata`` signature (so real TF Serving serves it too)."""
        outputs, _ = self.predict({}, "metadata", version)
        return json.loads(outputs["metadata"].item())

    def signature_defs(self, version: Optional[int] = None) -> Dict:
        """{signature name: SignatureDef proto} from GetModelMetadata."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, version)
        response = self._call(self._predictions.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def status(self, version: Optional[int] = None) -> List[Tuple[int, str]]:
        """[(version, state name)], e.g. ``[(3, "AVAILABLE")]``."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, version)
        response = self._call(self._models.GetModelStatus, request)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [(s.version, state_name(s.state)) for s in response.model_version_status]

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "RetrievalClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
