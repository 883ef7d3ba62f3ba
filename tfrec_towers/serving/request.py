"""One request against one loaded version, shared by gRPC, REST and warm-up: errors, limits, decoding
and validation of the inputs, and running the signature (``run_signature``).

Inputs arrive decoded by the caller's ``decode`` (TensorProtos here, JSON in ``rest.py``) and are checked
against the signature and the server's ``Limits`` before any tensor is built or fed. Every rejection is
a ``RequestError``: a gRPC status code, a message naming the input and expected vs got, and the HTTP
status of the REST answer. Below the version manager (warm-up replays requests through it); the
services above both are in ``handlers.py``.
"""
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2

from tfrec_towers.export.layout import ALLOWED_INPUT, EXCLUDE_INPUT, ITEM_IDS_OUTPUT, K_INPUT

DEFAULT_SIGNATURE = "serving_default"
#: Default budget for one request's inputs once decoded, checked on the declared shapes before any
#: tensor is built. A TensorProto may declare far more elements than it carries (the last value is
#: repeated), so a 200-byte message could otherwise make the server allocate gigabytes. Numbers decode
#: to about their wire size, so the message cap is a budget every honest request fits.
MAX_REQUEST_BYTES = 64 << 20
#: What one string element costs once decoded, besides its bytes: a numpy object pointer (8) and a
#: TensorFlow tstring (24), rounded up for the list ``tf.make_ndarray`` builds on the way.
STRING_ELEMENT_BYTES = 40
_StatusCode = grpc.StatusCode
_CODE_OF_TF_ERROR = {code.value[0]: code for code in grpc.StatusCode}  # TF's error codes are gRPC's
_HTTP_STATUS = {_StatusCode.INVALID_ARGUMENT: 400, _StatusCode.NOT_FOUND: 404}


class RequestError(Exception):
    """A request the server rejects: the gRPC status code, a message for the client and, where the
    code's usual HTTP status does not fit (413), the HTTP status of the REST answer."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: Optional[int] = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.http_status = http_status or _HTTP_STATUS.get(code, 500)


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)


def one_line(error: BaseException, limit: int = 500) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[:limit] + " ..."


def mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):,.1f} MiB"


class Limits(NamedTuple):
    max_batch_size: int
    max_request_bytes: int


def run_signature(version, spec: model_pb2.ModelSpec, decode: Callable, output_filter,
                  limits: Limits) -> Tuple[int, str, Dict]:
    """``RequestHandler.run`` on a given ``serving.versions.Version`` (also one not serving yet: warm-up),
    under ``limits``."""
    name = spec.signature_name or DEFAULT_SIGNATURE
    fn = version.signature(name)
    where = f"model {spec.name!r} version {version.number} signature {name!r}"
    specs, output_names = version.input_specs[name], version.output_names[name]
    unknown = sorted(set(output_filter) - set(output_names))
    if unknown:
        raise invalid(f"{where}: output_filter names unknown output {unknown[0]!r}; "
                      f"outputs: {', '.join(output_names)}")
    feeds = _validate(decode(specs, where), specs, where, limits)
    _check_k_values(feeds, fn.structured_outputs, where)
    try:
        outputs = fn(**feeds)
    except tf.errors.OpError as e:
        raise RequestError(_CODE_OF_TF_ERROR.get(e.error_code, _StatusCode.INTERNAL), f"{where}: {e.message}")
    keep = set(output_filter) or set(outputs)
    return version.number, name, {k: v.numpy() for k, v in outputs.items() if k in keep}


# ---- validation ------------------------------------------------------------------------------------------


def _ndarray(proto, name: str, where: str) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except Exception as e:
        raise invalid(f"{where}: input {name!r} is not a valid TensorProto: {one_line(e)}") from None


def _dtype_of(array: np.ndarray) -> tf.DType:
    return tf.string if array.dtype.kind in "OSU" else tf.as_dtype(array.dtype)


def _shape_text(shape: tf.TensorShape) -> str:
    return str(shape.as_list()) if shape.rank is not None else "any shape"


def _describe(specs: Dict[str, tf.TensorSpec]) -> str:
    return ", ".join(f"{n} ({s.dtype.name} {_shape_text(s.shape)})" for n, s in sorted(specs.items())) or "none"


def _decoded_bytes(dtype: tf.DType, num_elements: int, payload: int = 0) -> int:
    """Memory an input takes once decoded: numbers their item size each, strings ``STRING_ELEMENT_BYTES``
    each plus ``payload`` (their bytes, which a TensorProto's repeated last value does not multiply)."""
    return num_elements * (STRING_ELEMENT_BYTES if dtype == tf.string else dtype.size) + payload


def _check_names(names, specs: Dict[str, tf.TensorSpec], where: str) -> None:
    missing, unknown = sorted(set(specs) - set(names)), sorted(set(names) - set(specs))
    if missing:
        raise invalid(f"{where}: missing input {', '.join(map(repr, missing))}; it takes: {_describe(specs)}")
    if unknown:
        raise invalid(f"{where}: unknown input {', '.join(map(repr, unknown))}; it takes: {_describe(specs)}")


def _check_input(name: str, dtype: tf.DType, shape: List[int], spec: tf.TensorSpec, where: str) -> None:
    if dtype != spec.dtype:
        raise invalid(f"{where}: input {name!r} must be {spec.dtype.name}, got {dtype.name}")
    if not spec.shape.is_compatible_with(shape):
        raise invalid(f"{where}: input {name!r} must have shape {_shape_text(spec.shape)}, got {list(shape)}")


def _check_request(shapes: Dict[str, List[int]], sizes: Dict[str, int], specs: Dict[str, tf.TensorSpec],
                   where: str, limits: Limits) -> None:
    """The checks over all inputs: one batch size, at most ``max_batch_size`` rows, at most
    ``max_request_bytes`` decoded (``sizes``: each input's decoded bytes).

    Inputs whose signature leaves the first dimension open (the batch) must agree on it; an input with
    a fixed first dimension (``score``'s one user, shape [1]) is checked by its shape alone.
    """
    batches = {name: shape[0] for name, shape in sorted(shapes.items())
               if shape and specs[name].shape.rank and specs[name].shape[0] is None}
    if len(set(batches.values())) > 1:
        raise invalid(f"{where}: inputs have different batch sizes: "
                      + ", ".join(f"{name}={size}" for name, size in batches.items()))
    if EXCLUDE_INPUT in specs:  # a filtered signature
        _check_filter_shapes(shapes, next(iter(batches.values()), None), where)
    if batches and max(batches.values()) > limits.max_batch_size:
        name = max(batches, key=batches.get)
        raise invalid(f"{where}: input {name!r}: batch of {batches[name]} rows exceeds the server's "
                      f"max_batch_size {limits.max_batch_size}")
    total = sum(sizes.values())
    if total > limits.max_request_bytes:
        name = max(sizes, key=sizes.get)
        raise invalid(f"{where}: the inputs would take {mib(total)} once decoded ({name!r} alone "
                      f"{mib(sizes[name])}: shape {list(shapes[name])}), over the server's max_request_bytes "
                      f"{limits.max_request_bytes} ({mib(limits.max_request_bytes)})")


def _check_filter_shapes(shapes: Dict[str, List[int]], batch: Optional[int], where: str) -> None:
    """The filtered signatures' inputs of open rank (``export/retrieval_module.py``): ``k`` a scalar or one
    value per row, ``allowed_item_ids`` [A] (shared) or [B, A] (per row). Checked on the declared shapes."""
    if K_INPUT in shapes:
        shape = shapes[K_INPUT]
        if len(shape) > 1:
            raise invalid(f"{where}: input {K_INPUT!r} must be a scalar or [B] (one k per row), got shape {shape}")
        if len(shape) == 1 and batch is not None and shape[0] != batch:
            raise invalid(f"{where}: input {K_INPUT!r} has {shape[0]} values for a batch of {batch} rows: "
                          "send one k per row, or a scalar")
    if ALLOWED_INPUT in shapes:
        shape = shapes[ALLOWED_INPUT]
        if len(shape) not in (1, 2):
            raise invalid(f"{where}: input {ALLOWED_INPUT!r} must be [A] (one list for every row) or [B, A] "
                          f"(one per row), got shape {shape}")
        if len(shape) == 2 and batch is not None and shape[0] != batch:
            raise invalid(f"{where}: input {ALLOWED_INPUT!r} has {shape[0]} rows for a batch of {batch} rows")


def _check_k_values(feeds: Dict[str, tf.Tensor], outputs: Dict, where: str) -> None:
    """1 <= k <= the export's max-k (the width of its ``item_ids`` output), before the signature runs."""
    if K_INPUT not in feeds or EXCLUDE_INPUT not in feeds:
        return
    output = outputs.get(ITEM_IDS_OUTPUT) if isinstance(outputs, dict) else None
    max_k = output.shape[1] if output is not None and output.shape.rank == 2 else None
    k = np.asarray(feeds[K_INPUT].numpy()).ravel()
    if not k.size:
        return
    low, high = int(k.min()), int(k.max())
    if low < 1 or (max_k is not None and high > max_k):
        bad = low if low < 1 else high
        bound = f"between 1 and {max_k}, the export's maximum (export --max-k)" if max_k is not None else ">= 1"
        raise invalid(f"{where}: input {K_INPUT!r} must be {bound}; got {bad}")


def _declared(proto, name: str, where: str) -> Tuple[tf.DType, List[int], int]:
    """(dtype, shape, decoded bytes) a TensorProto declares, read without building the tensor."""
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        raise invalid(f"{where}: input {name!r} has an unknown dtype ({proto.dtype})") from None
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"{where}: input {name!r} must declare its shape")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise invalid(f"{where}: input {name!r} has a negative dimension: {shape}")
    payload = sum(map(len, proto.string_val)) if dtype == tf.string else 0
    return dtype, shape, _decoded_bytes(dtype, math.prod(shape), payload)


def proto_decoder(protos, limits: Limits) -> Callable:
    """``decode`` for ``run_signature`` from a request's TensorProtos: names, dtypes, shapes, the batch
    limit and the byte budget are checked on what each proto declares before any array is built."""

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
              limits: Limits) -> Dict[str, tf.Tensor]:
    """Check a request's inputs against the signature and the limits, naming the input and expected vs
    got; the tensors to feed."""
    _check_names(inputs, specs, where)
    for name, spec in sorted(specs.items()):
        _check_input(name, _dtype_of(inputs[name]), list(inputs[name].shape), spec, where)
    _check_request({name: list(array.shape) for name, array in inputs.items()},
                   {name: _array_bytes(array) for name, array in inputs.items()}, specs, where, limits)
    return {name: tf.convert_to_tensor(inputs[name], spec.dtype) for name, spec in specs.items()}
