"""``tfrec-towers ops``: which ops an export needs beyond TensorFlow's own, and who provides them.

A SavedModel loads only where every op in its graphs is registered. Stock TF Serving links in
TensorFlow's ops and tensorflow-text's (its ``SUPPORTED_TENSORFLOW_OPS`` includes
``@org_tensorflow_text//tensorflow_text:ops_lib``), but not ScaNN's (TFRS issue #182). The ops
are classified in a fresh interpreter that imports TensorFlow alone, then tensorflow-text, then
scann, noting which import registers each op: this process has already loaded the custom ops.
"""
import json
import os
import subprocess
import sys
from typing import Dict, List, Set

from tensorflow.core.protobuf import saved_model_pb2

from tfrec_towers.export.layout import SAVED_MODEL_FILE

__all__ = ["ops_report"]


_CLASSIFY = r"""
import json, sys
from tensorflow.python.framework import op_def_registry as reg
import tensorflow
ops, out = json.loads(sys.stdin.read()), {}
def mark(library):
    for op in ops:
        if op not in out and reg.get(op) is not None:
            out[op] = library
mark("tensorflow")
for module, library in (("tensorflow_text", "tensorflow-text"), ("scann", "scann")):
    try:
        __import__(module)
    except ImportError:
        continue
    mark(library)
print(json.dumps(out))
"""

#: Libraries whose ops stock TF Serving has.
STOCK_SERVING = ("tensorflow", "tensorflow-text")


def saved_model_ops(export_dir: str) -> Set[str]:
    """Every op type in the SavedModel's graphs and function library."""
    path = os.path.join(export_dir, SAVED_MODEL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{export_dir} is not a SavedModel directory (no {SAVED_MODEL_FILE})")
    saved = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        saved.ParseFromString(f.read())
    ops = set()
    for meta in saved.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def classify_ops(ops: Set[str]) -> Dict[str, str]:
    """op -> providing library ("tensorflow", "tensorflow-text", "scann" or "unknown")."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", _CLASSIFY], input=json.dumps(sorted(ops)), env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"classifying ops failed: {done.stderr.strip()[-2000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {op: found.get(op, "unknown") for op in sorted(ops)}


def ops_report(export_dir: str) -> Dict:
    """{"non_stock_ops": {library: [ops]}, "stock_tf_serving": bool} for one export version."""
    libraries = classify_ops(saved_model_ops(export_dir))
    by_library: Dict[str, List[str]] = {}
    for op, library in libraries.items():
        if library != "tensorflow":
            by_library.setdefault(library, []).append(op)
    return {"export": os.path.abspath(export_dir), "num_ops": len(libraries), "non_stock_ops": by_library,
            "stock_tf_serving": all(lib in STOCK_SERVING for lib in libraries.values())}
