"""The servable side of TF Serving's PredictionService and ModelService: Predict, GetModelMetadata and
GetModelStatus over the versions the version manager serves, each request run by ``request.py``."""
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

from tfrec_towers.export.layout import METADATA_ASSET
from tfrec_towers.serving import memory
from tfrec_towers.serving.request import Limits, invalid, not_found, proto_decoder, run_signature
from tfrec_towers.serving.versions import VersionManager

METADATA_FIELDS = ("signature_def", "tfrec_towers")
_AVAILABLE, _END = get_model_status_pb2.ModelVersionStatus.AVAILABLE, get_model_status_pb2.ModelVersionStatus.END


class RequestHandler:
    """The servable side of TF Serving's PredictionService and ModelService, over the versions that
    ``versions`` serves; the gRPC servicers and the REST codec call its public methods."""

    def __init__(self, versions: VersionManager, limits: Limits):
        self.versions, self.limits = versions, limits

    def run(self, spec: model_pb2.ModelSpec, decode: Callable, output_filter=()) -> Tuple[int, str, Dict]:
        """Run one signature: ``decode(input_specs, where)`` gives the request's numpy inputs.

        Returns (version that answered, signature name, numpy outputs). Every rejection is a RequestError.
        """
        with self.versions.lease(spec) as version:
            number, name, outputs = run_signature(version, spec, decode, output_filter, self.limits)
        memory.after_request(max((np.shape(v)[0] for v in outputs.values() if np.ndim(v)), default=0))
        return number, name, outputs

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        number, name, outputs = self.run(request.model_spec, proto_decoder(request.inputs, self.limits),
                                         request.output_filter)
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
            raise invalid(f"unsupported metadata_field {bad[0] if bad else '(none)'!r}; "
                          f"supported: {', '.join(METADATA_FIELDS)}")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        with self.versions.lease(request.model_spec) as version:
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = version.number
            for field in fields:
                if field == "signature_def":
                    response.metadata[field].Pack(version.signature_defs)
                elif version.info is None:
                    raise not_found(f"model {version.model!r} version {version.number} has "
                                    f"no {METADATA_ASSET} in {version.path}")
                else:
                    response.metadata[field].Pack(wrappers_pb2.StringValue(value=version.info))
        return response

    def model_status(self, spec: model_pb2.ModelSpec) -> Dict[int, int]:
        """{version: ModelVersionStatus.State} of what is loaded (AVAILABLE) or was unloaded or failed
        to load (END)."""
        return {n: state for n, (state, _) in self.version_statuses(spec).items()}

    def version_statuses(self, spec: model_pb2.ModelSpec) -> Dict[int, Tuple[int, Optional[Tuple]]]:
        """{version: (ModelVersionStatus.State, None or (grpc.StatusCode, message) of a failed load)}, as
        TF Serving reports a version that failed to load: END with the load's error."""
        loaded, ended, failed, models = self.versions.numbers(spec.name)
        states = {n: (_END, None) for n in ended}
        states.update({n: (_END, error) for n, error in failed.items()})
        states.update({n: (_AVAILABLE, None) for n in loaded})
        if not states:
            raise not_found(f"model {spec.name!r} has no versions under {self.versions.base_dir}; "
                            f"models: {', '.join(models) or 'none'}")
        if spec.HasField("version"):
            if spec.version.value not in states:
                raise not_found(f"model {spec.name!r} has no version {spec.version.value}; "
                                f"versions: {', '.join(map(str, sorted(states)))}")
            states = {spec.version.value: states[spec.version.value]}
        return dict(sorted(states.items()))

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest):
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, (state, error) in self.version_statuses(request.model_spec).items():
            status = response.model_version_status.add(version=number, state=state).status
            status.error_message = ""
            if error is not None:
                status.error_code, status.error_message = error[0].value[0], error[1]
        return response
