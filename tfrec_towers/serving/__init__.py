"""Serving an export: a local server speaking TensorFlow Serving's gRPC/REST API, and a client that
works unchanged against it and against a real ``tensorflow_model_server``."""
from tfrec_towers.serving.client import RetrievalClient, ServingError, TopK
from tfrec_towers.serving.server import ModelServer

__all__ = ["ModelServer", "RetrievalClient", "ServingError", "TopK"]
