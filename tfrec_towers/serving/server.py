"""A local model server that speaks TensorFlow Serving's gRPC (and optionally REST) API.

It serves TF Serving's layout (``export/layout.py``): every ``BASE/NAME/<version>`` holding a
``saved_model.pb``, the latest ``num_versions`` of each model, each warmed up before it takes traffic.
Clients written against TF Serving's public API (``tfrec_towers.serving.client``) work unchanged
against either. Unlike stock TF Serving it imports ScaNN's custom ops, so ``scann`` exports load.

Split as TF Serving's ``model_servers/`` is: this module assembles the parts and runs their lifecycle;
``request.py`` checks and runs one request on one version (limits, validation), ``versions.py`` manages
versions (polling, loading, warm-up, leases, freeing), ``handlers.py`` answers Predict, GetModelMetadata
and GetModelStatus over them, ``grpc_service.py`` and
``rest.py`` put them on gRPC and on REST/JSON.
"""
import errno
import ipaddress
import os
import signal
import socket
import threading
import time
from typing import Dict, Optional

from tfrec_towers.serving.grpc_service import start_grpc
from tfrec_towers.serving.handlers import RequestHandler
from tfrec_towers.serving.request import MAX_REQUEST_BYTES, Limits
from tfrec_towers.serving.rest import MAX_JSON_DEPTH, MAX_REST_BODY_BYTES, start_rest
from tfrec_towers.serving.versions import VersionManager, import_custom_ops

__all__ = ["DEFAULT_GRACE_PERIOD_S", "MAX_JSON_DEPTH", "MAX_REQUEST_BYTES", "MAX_REST_BODY_BYTES", "ModelServer",
           "PortError", "import_custom_ops"]

#: Seconds in-flight requests get to finish once a stop is asked for (SIGTERM, Ctrl-C, ``stop()``) before
#: they are cancelled: enough for any request within the default limits on a loaded machine, short
#: enough for a process manager's own timeout (systemd waits 90 s, Kubernetes 30 s before SIGKILL).
DEFAULT_GRACE_PERIOD_S = 5.0


class PortError(OSError):
    """A port the server cannot listen on (in use, or not an address of this machine); the message says
    which port and why."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_port_free(host: str, port: int, what: str) -> None:
    """Bind (and release at once) every address of ``host:port``; PortError if one cannot be bound.

    Run before any model loads, so a port in use is reported at once, not after minutes of loading. Port 0
    (any free port) is not checked. SO_REUSEADDR as gRPC and http.server set it: a port held only by
    connections in TIME_WAIT is free for them, and so it is here.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PortError(f"cannot listen on {host}:{port} ({what}): {e.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise PortError(f"port {port} is in use ({what} on {host}:{port}): stop what listens there "
                                    f"or choose another port") from None
                raise PortError(f"cannot listen on {host}:{port} ({what}): {e.strerror}") from None


class ModelServer:
    """Serves every model under ``base_dir`` over gRPC on ``host:grpc_port`` (and REST on ``rest_port``).

    Ports given as 0 pick free ones; after ``start()`` the attributes ``grpc_port`` / ``rest_port`` hold
    the bound ports. ``start()`` loads synchronously, so it returns with the latest versions available.

    Limits, each checked before the memory it guards is allocated: ``max_batch_size`` rows per request
    and ``max_request_bytes`` of decoded inputs (both on the shapes and dtypes a request declares),
    ``max_rest_body_bytes`` per REST body (413), JSON nested at most ``MAX_JSON_DEPTH`` deep. They are
    read when the server is constructed.

    ``stop()`` (and SIGTERM/SIGINT in ``serve_forever``) stops accepting requests at once and gives those
    in flight ``grace_period_s`` seconds to finish before they are cancelled.
    """

    def __init__(self, base_dir: str, host: str = "127.0.0.1", grpc_port: int = 8500, rest_port: Optional[int] = None,
                 poll_interval_s: float = 1.0, max_batch_size: int = 1000, num_versions: int = 1, log=print,
                 max_request_bytes: int = MAX_REQUEST_BYTES, max_rest_body_bytes: int = MAX_REST_BODY_BYTES,
                 grace_period_s: float = DEFAULT_GRACE_PERIOD_S):
        if num_versions < 1:
            raise ValueError(f"num_versions must be >= 1, got {num_versions}")
        if not grace_period_s >= 0:  # NaN too
            raise ValueError(f"grace_period_s must be >= 0, got {grace_period_s}")
        if rest_port is not None and rest_port == grpc_port != 0:
            raise ValueError(f"the gRPC and REST ports must differ, both are {grpc_port}")
        for what, value in (("max_batch_size", max_batch_size), ("max_request_bytes", max_request_bytes),
                            ("max_rest_body_bytes", max_rest_body_bytes)):
            if value < 1:
                raise ValueError(f"{what} must be >= 1, got {value}")
        self.base_dir = os.path.abspath(base_dir)
        self.host, self.grpc_port, self.rest_port = host, grpc_port, rest_port
        self.poll_interval_s, self.max_batch_size, self.num_versions = poll_interval_s, max_batch_size, num_versions
        self.max_request_bytes, self.max_rest_body_bytes = max_request_bytes, max_rest_body_bytes
        self.grace_period_s = grace_period_s
        self._log = log
        limits = Limits(max_batch_size, max_request_bytes)
        self._versions = VersionManager(self.base_dir, num_versions, limits, poll_interval_s, log)
        self._handler = RequestHandler(self._versions, limits)
        self._stopped, self._stop_lock, self._finished = threading.Event(), threading.Lock(), True
        self._grpc = self._rest = None

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
        check_port_free(self.host, self.grpc_port, "gRPC, --port")  # before minutes of loading, not after
        if self.rest_port is not None:
            check_port_free(self.host, self.rest_port, "REST, --rest-port")
        if not is_loopback(self.host):
            self._log(f"WARNING: listening on {self.host}, not loopback: this server has no authentication and "
                      f"no TLS, so anyone who can reach its ports can query every model it serves. Keep it "
                      f"behind a firewall or an authenticating proxy, or bind 127.0.0.1 (the default).")
        import_custom_ops(self._log)
        try:
            self._versions.sync()
            try:  # the ports were free before loading; something may have taken one since
                self._grpc, self.grpc_port = start_grpc(self._handler, self.host, self.grpc_port)
            except OSError as e:
                raise PortError(f"{e} (gRPC, --port): in use, or not an address of this machine") from None
            if self.rest_port is not None:
                try:
                    self._rest, self.rest_port = start_rest(self._handler, self.host, self.rest_port,
                                                            self.max_rest_body_bytes, self._log)
                except OSError as e:
                    raise PortError(f"cannot listen on {self.host}:{self.rest_port} (REST, --rest-port): "
                                    f"{e.strerror or e}") from None
        except BaseException:
            self.stop()  # e.g. the REST port is taken: release what did start
            raise
        self._versions.start_polling()
        rest = f", REST on {self.host}:{self.rest_port}" if self._rest else ""
        self._log(f"serving {self.base_dir}: gRPC on {self.target}{rest}")
        return self

    def stop(self, grace: Optional[float] = None) -> bool:
        """Stop accepting requests at once (gRPC answers new calls UNAVAILABLE, the REST port closes),
        give the requests in flight ``grace`` seconds (default: ``grace_period_s``; 0 cancels them) to
        finish, then stop polling and unload everything.

        Returns False when requests were still running at the end of the grace period: gRPC has
        cancelled them, but a signature run cannot be interrupted, so their threads go on (and a process
        that wants to exit now has to leave without waiting for them: ``os._exit``, as the CLI does).
        """
        grace = self.grace_period_s if grace is None else grace
        with self._stop_lock:  # a signal handler and serve_forever's cleanup may both call it
            if self._stopped.is_set():
                return self._finished
            deadline = time.monotonic() + grace
            grpc_stopped = self._grpc.stop(grace) if self._grpc is not None else None  # returns at once
            rest_idle = grpc_idle = True
            if self._rest is not None:
                self._rest.shutdown()
                self._rest.server_close()  # new connections are refused; accepted ones go on
                rest_idle = self._rest.wait_idle(deadline)
            if grpc_stopped is not None:
                grpc_stopped.wait()  # set once every call ended, or at the deadline after cancelling the rest
                grpc_idle = self._grpc.wait_idle(deadline + 0.1)  # cancelled calls' handlers may still run
            self._finished = rest_idle and grpc_idle
            if not self._finished:
                self._log(f"requests still running at the end of the {grace:g} s grace period were cancelled")
            self._versions.stop_polling()
            self._versions.unload_all()
            self._stopped.set()
            return self._finished

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until ``stop()`` has finished (or ``timeout``); True when stopped."""
        return self._stopped.wait(timeout)

    def serve_forever(self) -> bool:
        """Start if needed and serve until ``stop()`` is called, SIGINT (Ctrl-C) or SIGTERM (the CLI's
        ``serve``; SIGTERM is how process managers stop a server); then stop, in-flight requests getting
        ``grace_period_s`` seconds. Returns ``stop()``'s answer: False if some outlasted it.

        In the main thread both signals get handlers of their own, so a disposition inherited from the
        parent (SIG_IGN) cannot make the server unstoppable, and the wait wakes every half second to let
        Python run them. The handlers are in place before ``start``, so a signal sent as soon as the
        "serving" line appears stops the server cleanly; one sent while the models load interrupts the
        load (``start`` releases what it had started).
        """
        requested, ready = threading.Event(), threading.Event()

        def on_signal(*_):
            requested.set()
            if not ready.is_set():
                raise KeyboardInterrupt

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                previous[number] = signal.signal(number, on_signal)
        try:
            if self._grpc is None:
                self.start()
            ready.set()
            while not requested.is_set() and not self.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            finished = self.stop()
            for number, handler in previous.items():
                signal.signal(number, handler)
        return finished

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- requests, as over gRPC (``handlers.RequestHandler``) -------------------------------------------

    def predict(self, request):
        return self._handler.predict(request)

    def get_model_metadata(self, request):
        return self._handler.get_model_metadata(request)

    def model_status(self, spec) -> Dict[int, int]:
        """{version: ModelVersionStatus.State} of what is loaded (AVAILABLE) or was unloaded (END)."""
        return self._handler.model_status(spec)

    def get_model_status(self, request):
        return self._handler.get_model_status(request)
