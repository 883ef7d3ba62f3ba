"""TF Serving's gRPC services over the request handler: PredictionService (Predict, GetModelMetadata;
Classify, Regress and MultiInference stay UNIMPLEMENTED) and ModelService (GetModelStatus)."""
import threading
import time
from concurrent import futures
from typing import Callable, Tuple

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from tfrec_towers.export.layout import MAX_MESSAGE_BYTES
from tfrec_towers.serving.handlers import RequestHandler
from tfrec_towers.serving.request import RequestError, one_line


class _Calls:
    """The calls whose handler is running. gRPC's ``stop(grace)`` cancels the calls left at the end of the
    grace period, but their threads go on until the handler returns (a signature run cannot be
    interrupted), and Python waits for them at exit: a stop needs to know whether any is left."""

    def __init__(self):
        self._running, self._idle = 0, threading.Condition()

    def __enter__(self):
        with self._idle:
            self._running += 1

    def __exit__(self, *exc):
        with self._idle:
            self._running -= 1
            self._idle.notify_all()

    def wait_idle(self, deadline: float) -> bool:
        """Wait until no handler runs, or until ``deadline`` (time.monotonic()); True if none runs."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, max(0.0, deadline - time.monotonic()))


def _answer(context: grpc.ServicerContext, handler: Callable, request, calls: _Calls):
    """Map a handler's rejection or crash to a gRPC status; the server keeps serving either way."""
    with calls:
        try:
            return handler(request)
        except RequestError as e:
            context.abort(e.code, e.message)
        except Exception as e:
            context.abort(grpc.StatusCode.INTERNAL, one_line(e, 2000))


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference stay UNIMPLEMENTED."""

    def __init__(self, handler: RequestHandler, calls: _Calls):
        self._handler, self._calls = handler, calls

    def Predict(self, request, context):
        return _answer(context, self._handler.predict, request, self._calls)

    def GetModelMetadata(self, request, context):
        return _answer(context, self._handler.get_model_metadata, request, self._calls)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, handler: RequestHandler, calls: _Calls):
        self._handler, self._calls = handler, calls

    def GetModelStatus(self, request, context):
        return _answer(context, self._handler.get_model_status, request, self._calls)


class GrpcServer:
    """The started gRPC server: ``stop(grace)`` as ``grpc.Server``'s, and ``wait_idle`` for the handlers."""

    def __init__(self, server: grpc.Server, calls: _Calls):
        self._server, self._calls = server, calls

    def stop(self, grace) -> threading.Event:
        """Refuse new calls (UNAVAILABLE) at once; cancel those still running after ``grace`` seconds.
        Returns at once, with the event set once every call has ended or been cancelled."""
        return self._server.stop(grace)

    def wait_idle(self, deadline: float) -> bool:
        return self._calls.wait_idle(deadline)


def start_grpc(handler: RequestHandler, host: str, port: int) -> Tuple[GrpcServer, int]:
    """Both services on ``host:port`` (0: a free port), started: (the server, the bound port)."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.so_reuseport", 0)]  # a port in use must fail here, not be shared silently
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
    calls = _Calls()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(handler, calls), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(handler, calls), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:
        raise OSError(f"cannot bind gRPC to {host}:{port}: {e}") from None
    if not bound:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    server.start()
    return GrpcServer(server, calls), bound
