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
import os
import signal
import threading
from typing import Dict, Optional

from tfrec_towers.serving.grpc_service import start_grpc
from tfrec_towers.serving.handlers import RequestHandler
from tfrec_towers.serving.request import MAX_REQUEST_BYTES, Limits
from tfrec_towers.serving.rest import MAX_JSON_DEPTH, MAX_REST_BODY_BYTES, start_rest
from tfrec_towers.serving.versions import VersionManager, import_custom_ops

__all__ = ["MAX_JSON_DEPTH", "MAX_REQUEST_BYTES", "MAX_REST_BODY_BYTES", "ModelServer", "import_custom_ops"]


class ModelServer:
    """Serves every model under ``base_dir`` over gRPC on ``host:grpc_port`` (and REST on ``rest_port``).

    Ports given as 0 pick free ones; after ``start()`` the attributes ``grpc_port`` / ``rest_port`` hold
    the bound ports. ``start()`` loads synchronously, so it returns with the latest versions available.

    Limits, each checked before the memory it guards is allocated: ``max_batch_size`` rows per request
    and ``max_request_bytes`` of decoded inputs (both on the shapes and dtypes a request declares),
    ``max_rest_body_bytes`` per REST body (413), JSON nested at most ``MAX_JSON_DEPTH`` deep. They are
    read when the server is constructed.
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
        limits = Limits(max_batch_size, max_request_bytes)
        self._versions = VersionManager(self.base_dir, num_versions, limits, poll_interval_s, log)
        self._handler = RequestHandler(self._versions, limits)
        self._stopped, self._stop_lock = threading.Event(), threading.Lock()
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
        import_custom_ops(self._log)
        try:
            self._versions.sync()
            self._grpc, self.grpc_port = start_grpc(self._handler, self.host, self.grpc_port)
            if self.rest_port is not None:
                self._rest, self.rest_port = start_rest(self._handler, self.host, self.rest_port,
                                                        self.max_rest_body_bytes, self._log)
        except BaseException:
            self.stop()  # e.g. the REST port is taken: release what did start
            raise
        self._versions.start_polling()
        rest = f", REST on {self.host}:{self.rest_port}" if self._rest else ""
        self._log(f"serving {self.base_dir}: gRPC on {self.target}{rest}")
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        """Stop polling and serving (in-flight requests get ``grace`` seconds), then unload everything."""
        with self._stop_lock:  # a signal handler and serve_forever's cleanup may both call it
            if self._stopped.is_set():
                return
            self._versions.stop_polling()
            if self._grpc is not None:
                self._grpc.stop(grace).wait()
            if self._rest is not None:
                self._rest.shutdown()
                self._rest.server_close()
            self._versions.unload_all()
            self._stopped.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until ``stop()`` has finished (or ``timeout``); True when stopped."""
        return self._stopped.wait(timeout)

    def serve_forever(self) -> None:
        """Start if needed and serve until ``stop()`` is called, SIGINT (Ctrl-C) or SIGTERM (the CLI's
        ``serve``; SIGTERM is how process managers stop a server).

        In the main thread both signals get handlers of their own, so a disposition inherited from the
        parent (SIG_IGN) cannot make the server unstoppable, and the wait wakes every half second to let
        Python run them.
        """
        if self._grpc is None:
            self.start()
        requested = threading.Event()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                previous[number] = signal.signal(number, lambda *_: requested.set())
        try:
            while not requested.is_set() and not self.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
            for number, handler in previous.items():
                signal.signal(number, handler)

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
