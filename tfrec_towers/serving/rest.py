"""TF Serving's REST API (its JSON codec) over the request handler: ``POST /v1/models/NAME[/versions/N]:predict``
(row format ``instances`` or columnar ``inputs``) and ``GET /v1/models/NAME[/versions/N]`` (status).

JSON becomes numpy here and numpy JSON; everything else (signature, dtypes, shapes, limits) is the
handler's, so REST answers exactly as gRPC does. This module bounds what only REST has: the body
(``max_rest_body_bytes``, 413, whether sent with a Content-Length or chunked), JSON nesting
(``MAX_JSON_DEPTH``) and the framing headers (one Content-Length, 400 when several disagree; 411 with
neither it nor chunked Transfer-Encoding; 501 for another transfer coding).
"""
import base64
import contextlib
import http.server
import json
import re
import sys
import threading
import time
from typing import Callable, Dict, Iterator, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

from tfrec_towers.serving.handlers import RequestHandler
from tfrec_towers.serving.request import RequestError, invalid, mib, not_found, one_line

#: Default cap on a REST body (413 above it). ``json.loads`` holds up to ~20x the body in Python objects
#: before anything can be checked, so the body size is the only bound on that memory: 16 MiB admits a
#: 10,000-row batch of ~1.6 KB JSON rows (ten times the default max batch) and keeps one parse under
#: ~350 MB.
MAX_REST_BODY_BYTES = 16 << 20
#: JSON deeper than this gets 400: it bounds the recursion of decoding, and no signature takes tensors of
#: anywhere near that rank (rows, a ``{"b64"}`` object and a named input add three levels).
MAX_JSON_DEPTH = 64
#: A body over the cap is read and thrown away up to this much after the 413 is sent, so that the
#: client's unread data does not reset the connection before it reads the answer.
_DRAIN_BYTES = 1 << 20
#: Longest chunk-size or trailer line of a chunked body; at most this many trailer lines.
_MAX_CHUNK_LINE, _MAX_TRAILERS = 4096, 64
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                        r"(?::(?P<verb>\w+))?$")


# ---- JSON -> numpy ---------------------------------------------------------------------------------------


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
    (JSON cannot say float32), anything else is left for the handler's validation to report."""
    try:
        data = _from_json(value)
    except (TypeError, ValueError) as e:  # a "b64" value that is not base64
        raise invalid(f"{where}: input {name!r} holds invalid base64: {e}") from None
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
        raise invalid(f"{where}: input {name!r} must hold only strings or only numbers")
    if ragged:
        raise invalid(f"{where}: input {name!r} is ragged: every row must have the same length")
    if spec is not None and spec.dtype != tf.string and array.dtype.kind in "biuf":
        if np.can_cast(array.dtype, spec.dtype.as_numpy_dtype, "same_kind"):
            array = array.astype(spec.dtype.as_numpy_dtype)
    return array


def _single_input(specs: Dict, where: str, what: str) -> str:
    if len(specs) != 1:
        raise invalid(f"{where}: {what} must be an object naming the inputs ({', '.join(sorted(specs))})")
    return next(iter(specs))


def _decode_rows(instances, specs: Dict, where: str) -> Dict[str, np.ndarray]:
    """Row format: a list of ``{input: value}`` objects, or of bare values for a one-input signature."""
    if not isinstance(instances, list) or not instances:
        raise invalid(f"{where}: 'instances' must be a non-empty list")
    if all(isinstance(row, dict) and set(row) != {"b64"} for row in instances):
        names = set(instances[0])
        for i, row in enumerate(instances):
            if set(row) != names:
                raise invalid(f"{where}: instance {i} has inputs {sorted(row)}, instance 0 has {sorted(names)}")
        columns = {name: [row[name] for row in instances] for name in names}
    else:
        columns = {_single_input(specs, where, "each instance"): instances}
    return {name: _json_array(value, specs.get(name), name, where) for name, value in columns.items()}


def _decode_columns(inputs, specs: Dict, where: str) -> Dict[str, np.ndarray]:
    """Columnar format: ``{input: batched value}``, or the bare value for a one-input signature."""
    if not (isinstance(inputs, dict) and set(inputs) != {"b64"}):
        inputs = {_single_input(specs, where, "'inputs'"): inputs}
    return {name: _json_array(value, specs.get(name), name, where) for name, value in inputs.items()}


# ---- numpy -> JSON ---------------------------------------------------------------------------------------


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
        raise invalid(f"{where}: outputs do not share a batch size, so they cannot be returned as rows; "
                      f"send 'inputs' (columnar format) instead of 'instances'")
    return [{k: _to_json(v[i]) for k, v in outputs.items()} for i in range(sizes.pop())]


# ---- routes and limits -----------------------------------------------------------------------------------


def _rest_target(path: str) -> Tuple[model_pb2.ModelSpec, Optional[str]]:
    match = _REST_PATH.match(path.split("?", 1)[0])
    if not match:
        raise not_found(f"unknown path {path}; use /v1/models/NAME[/versions/N][:predict]")
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
    too_deep = invalid(f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    try:
        request = json.loads(body)
    except RecursionError:  # the C parser stops at the interpreter's recursion limit
        raise too_deep from None
    except ValueError as e:
        raise invalid(f"request body is not JSON: {e}") from None
    if _json_depth(request, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise too_deep
    return request


def _content_length(value: Optional[str], limit: int) -> int:
    """A POST's Content-Length: 400 unless a non-negative integer, 413 over ``limit``."""
    text = (value or "0").strip()
    if not (text.isascii() and text.isdigit()):
        raise invalid(f"Content-Length must be a non-negative integer, got {value[:40]!r}")
    length = int(text) if len(text) <= 18 else 10 ** 18  # int() refuses over 4,300 digits
    if length > limit:
        shown = text if len(text) <= 18 else f"over 10^18 ({len(text)} digits)"
        raise _too_large(f"request body of {shown} bytes", limit)
    return length


def _too_large(what: str, limit: int) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is over the server's max_rest_body_bytes "
                        f"{limit} ({mib(limit)})", http_status=413)


def _body_framing(headers, limit: int) -> Optional[int]:
    """How a POST's body is framed: its length (Content-Length), or None for a chunked body.

    400 for Content-Length headers that disagree (one value must win for every reader on the way, or a
    proxy and this server could split the stream differently) and for Content-Length beside
    Transfer-Encoding; 501 for a transfer coding other than ``chunked``; 411 without either header
    (a body of unknown length).
    """
    lengths = [v.strip() for v in headers.get_all("Content-Length") or []]
    encodings = headers.get_all("Transfer-Encoding") or []
    if encodings:
        if lengths:
            raise invalid("the request has both Transfer-Encoding and Content-Length headers; send one")
        codings = [c.strip().lower() for value in encodings for c in value.split(",") if c.strip()]
        if codings != ["chunked"]:
            raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"Transfer-Encoding {', '.join(codings)[:80]!r} is "
                               f"not supported: send the body as it is, with Content-Length or chunked",
                               http_status=501)
        return None
    if not lengths:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "a POST needs a Content-Length header (or "
                           "Transfer-Encoding: chunked)", http_status=411)
    if len(set(lengths)) > 1:
        raise invalid(f"the request has {len(lengths)} Content-Length headers that disagree "
                      f"({', '.join(repr(v[:20]) for v in lengths[:4])}); send one")
    return _content_length(lengths[0], limit)


def _read_chunked(rfile, limit: int) -> bytes:
    """A chunked body (RFC 9112 section 7.1), at most ``limit`` bytes once joined (413 above); 400 when
    malformed. Chunk extensions and trailers are read and ignored."""

    def line(what: str) -> bytes:
        text = rfile.readline(_MAX_CHUNK_LINE + 1)
        if len(text) > _MAX_CHUNK_LINE:
            raise invalid(f"malformed chunked body: a {what} line is longer than {_MAX_CHUNK_LINE} bytes")
        if not text.endswith(b"\n"):
            raise invalid(f"malformed chunked body: it ends inside a {what} line")
        return text

    body = bytearray()
    while True:
        size_text = line("chunk-size").split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
            raise invalid(f"malformed chunked body: chunk size {size_text[:20].decode('latin-1')!r} is not "
                          f"a hexadecimal number")
        size = int(size_text, 16)
        if size == 0:
            break
        if len(body) + size > limit:
            raise _too_large(f"chunked request body (over {len(body) + size} bytes so far)", limit)
        chunk = rfile.read(size)
        if len(chunk) < size:
            raise invalid(f"malformed chunked body: a chunk of {size} bytes ends after {len(chunk)}")
        body += chunk
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise invalid("malformed chunked body: a chunk is not followed by CRLF")
    for _ in range(_MAX_TRAILERS):
        if line("trailer") in (b"\r\n", b"\n"):
            return bytes(body)
    raise invalid(f"malformed chunked body: more than {_MAX_TRAILERS} trailer lines")


def _rest_predict(handler: RequestHandler, path: str, body: bytes) -> Dict:
    spec, verb = _rest_target(path)
    if verb != "predict":
        raise not_found(f"POST {path}: only :predict is served")
    request = _parse_json(body)
    if not isinstance(request, dict) or ("instances" in request) == ("inputs" in request):
        raise invalid("request body must be a JSON object with exactly one of 'instances' (row format) "
                      "or 'inputs' (columnar format)")
    spec.signature_name = request.get("signature_name") or ""
    rows = "instances" in request
    payload = request["instances" if rows else "inputs"]
    decode = _decode_rows if rows else _decode_columns
    number, name, outputs = handler.run(spec, lambda specs, where: decode(payload, specs, where))
    if rows:
        return {"predictions": _rows_json(outputs, f"model {spec.name!r} version {number} signature {name!r}")}
    return {"outputs": _to_json(next(iter(outputs.values()))) if len(outputs) == 1
            else {k: _to_json(v) for k, v in outputs.items()}}


def _rest_status(handler: RequestHandler, path: str) -> Dict:
    spec, verb = _rest_target(path)
    if verb is not None:
        raise not_found(f"GET {path}: use POST for :{verb}")
    states = handler.version_statuses(spec)
    return {"model_version_status": [
        {"version": str(n), "state": get_model_status_pb2.ModelVersionStatus.State.Name(s),
         "status": {"error_code": error[0].name if error else "OK", "error_message": error[1] if error else ""}}
        for n, (s, error) in states.items()]}


# ---- the HTTP server -------------------------------------------------------------------------------------


class _RestServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler: RequestHandler, max_body_bytes: int, log: Callable):
        super().__init__(address, _RestHandler)
        self.handler, self.max_body_bytes, self.log = handler, max_body_bytes, log
        self._active, self._idle = 0, threading.Condition()

    # Connections accepted and not yet answered, counted from the accept loop's thread (so none is missed
    # once ``shutdown()`` has returned) to the end of the connection's thread: what a stop waits for.

    def process_request(self, request, client_address):
        with self._idle:
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._finished()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._finished()

    def _finished(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def wait_idle(self, deadline: float) -> bool:
        """Wait until no connection is being served, or until ``deadline`` (time.monotonic()); True if idle."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, max(0.0, deadline - time.monotonic()))

    def handle_error(self, request, client_address):
        """One log line (e.g. a client that hung up mid-answer) instead of socketserver's traceback."""
        self.log(f"REST request from {client_address[0]} failed: {one_line(sys.exc_info()[1])}")


class _RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST endpoints, answered by the same request path (and validation) as gRPC."""

    #: Seconds a client may stall while sending: a slow client cannot hold a thread forever.
    timeout = 60

    def do_GET(self):
        self._reply(lambda: _rest_status(self.server.handler, self.path))

    def do_POST(self):
        limit = self.server.max_body_bytes
        try:  # a body is read only once its declared size is known to be within the limit (chunked: as read)
            length = _body_framing(self.headers, limit)
            body = _read_chunked(self.rfile, limit) if length is None else self.rfile.read(length)
        except RequestError as e:
            self.close_connection = True  # the rest of the body, if any, is not read
            self._send(e.http_status, {"error": e.message})
            if e.http_status == 413:
                self._discard()
            return
        self._reply(lambda: _rest_predict(self.server.handler, self.path, body))

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
            status, payload = 500, {"error": one_line(e, 2000)}
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


def start_rest(handler: RequestHandler, host: str, port: int, max_body_bytes: int,
               log: Callable = print) -> Tuple[http.server.ThreadingHTTPServer, int]:
    """The REST API on ``host:port`` (0: a free port), served by a daemon thread: (the server, the bound port)."""
    server = _RestServer((host, port), handler, max_body_bytes, log)
    threading.Thread(target=server.serve_forever, name="model-server-rest", daemon=True).start()
    return server, server.server_address[1]
