"""The benchmark scripts, each run from the repository root as ``python -m benchmarks.NAME``; what they
share is in ``benchmarks.harness``. Not installed with the library (setup.py packages ``tfrec_towers`` only)."""
import os

# The library leaves TensorFlow's logging alone; the scripts may not. Set here, before any script's
# imports load TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
