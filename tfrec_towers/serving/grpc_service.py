"""TF Serving's gRPC services over the request handler: PredictionService (Predict, GetModelMetadata;
Classify, Regress and MultiInference stay UNIMPLEMENTED) and ModelService (GetModelStatus)."""
from concurrent import futures
from typing import Callable, Tuple

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from tfrec_towers.export.layout import MAX_MESSAGE_BYTES
from tfrec_towers.serving.handlers import RequestHandler
from tfrec_towers.serving.request import RequestError, one_line


def _answer(context: grpc.ServicerContext, handler: Callable, request):
    """Map a handler's rejection or crash to a gRPC status; the server keeps serving either way."""
    try:
        return handler(request)
    except RequestError as e:
        context.abort(e.code, e.message)
    except Exception as e:
        context.abort(grpc.StatusCode.INTERNAL, one_line(e, 2000))


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference stay UNIMPLEMENTED."""

    def __init__(self, handler: RequestHandler):
        self._handler = handler

    def Predict(self, request, context):
        return _answer(context, self._handler.predict, request)

    def GetModelMetadata(self, request, context):
        return _answer(context, self._handler.get_model_metadata, request)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, handler: RequestHandler):
        self._handler = handler

    def GetModelStatus(self, request, context):
        return _answer(context, self._handler.get_model_status, request)


def start_grpc(handler: RequestHandler, host: str, port: int) -> Tuple[grpc.Server, int]:
    """Both services on ``host:port`` (0: a free port), started: (the server, the bound port)."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.so_reuseport", 0)]  # a port in use must fail here, not be shared silently
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(handler), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(handler), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:
        raise OSError(f"cannot bind gRPC to {host}:{port}: {e}") from None
    if not bound:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    server.start()
    return server, bound
