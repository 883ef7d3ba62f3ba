"""TF Serving's on-disk layout, the one thing export (which writes it) and serving (which reads it) share.

``BASE/NAME`` is a model; its integer-named subdirectories are versions (TF Serving ignores every other
child, so a version staged in ``BASE/NAME/.tmp-*`` and renamed into place appears whole or not at all);
a version is complete once it holds ``saved_model.pb``. No TensorFlow here: the server imports nothing
else of ``export``. (The index types, ``--index``, are ``tfrec_towers.choices.INDEX_TYPES``.)
"""
import os
from typing import Dict, List, Optional

__all__ = ["ITEM_IDS_OUTPUT", "MAX_MESSAGE_BYTES", "MAX_WARMUP_RECORDS", "METADATA_ASSET", "METADATA_FILE",
           "SAVED_MODEL_FILE", "STAGING_PREFIX", "WARMUP_FILE", "latest_version", "list_versions", "model_names",
           "version_dirs"]


#: Prefix of a version's staging directory, ``BASE/NAME/.tmp-<version>-<host>-<pid>``: not an integer
#: name, so no server takes it for a version, and it starts with "." so no server takes it for a model.
STAGING_PREFIX = ".tmp-"
#: The file whose presence makes a version directory a complete SavedModel.
SAVED_MODEL_FILE = "saved_model.pb"
#: The export's metadata (JSON), an asset of the SavedModel: ``assets/tfrec_towers.json`` in a version.
METADATA_FILE = "tfrec_towers.json"
METADATA_ASSET = os.path.join("assets", METADATA_FILE)
#: TF Serving's warm-up file in a version: PredictionLog records it replays on load, before the version
#: takes traffic (at most ``MAX_WARMUP_RECORDS``, TF Serving's limit); ``tfrec-towers serve`` does the same.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000
#: gRPC's message cap, for the server (the largest request it reads at all) and the client (both ways).
MAX_MESSAGE_BYTES = 64 << 20
#: The inputs the filtered signatures add to the query features (``export/retrieval_module.py``), and the
#: output whose width is the export's max-k: named here so that the server checks them without TensorFlow.
K_INPUT, EXCLUDE_INPUT, ALLOWED_INPUT = "k", "exclude_item_ids", "allowed_item_ids"
ITEM_IDS_OUTPUT = "item_ids"


def is_version_name(name: str) -> bool:
    """Whether a child of BASE/NAME named ``name`` is a version: an integer (ASCII digits) name."""
    return name.isascii() and name.isdigit()


def model_names(base_dir: str) -> List[str]:
    """The models under BASE, in name order: its subdirectories, except hidden ones (lock files and the like)."""
    with os.scandir(base_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def version_dirs(model_dir: str) -> Dict[int, str]:
    """{version: directory} of BASE/NAME's integer-named subdirectories, complete or not (a version
    being written has no ``saved_model.pb`` yet). FileNotFoundError if ``model_dir`` is gone."""
    with os.scandir(model_dir) as entries:
        return {int(e.name): e.path for e in entries if is_version_name(e.name) and e.is_dir()}


def list_versions(model_dir: str) -> List[int]:
    """Versions under BASE/NAME, ascending (integer-named directories only); none if it does not exist."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(version_dirs(model_dir))


def latest_version(model_dir: str) -> Optional[int]:
    versions = list_versions(model_dir)
    return versions[-1] if versions else None
