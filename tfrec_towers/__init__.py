"""tfrec_towers: two-tower (DSSM-style) retrieval trained from TFRecord event logs.

Importing the package makes TensorFlow use Keras 2 (``tf_keras``), which TensorFlow Recommenders
needs: ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first imported. If TensorFlow
was already imported with Keras 3 that is impossible, and we fail with a message saying what to do.
That is the only process-wide setting the import makes: TensorFlow's logging is left to the
application (the ``tfrec-towers`` command quiets it).
"""
import os
import sys

__version__ = "0.1.0"


def _use_keras2() -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if "tensorflow" not in sys.modules:
        return
    # TensorFlow is already imported: tf.keras is resolved lazily on first access, so the variable
    # above may still take effect. If Keras 3 was already bound, there is no way back.
    import tensorflow as tf

    version = getattr(tf.keras, "version", None)  # absent on Keras 2 before TF 2.16
    if version is not None and version().startswith("3."):
        raise ImportError(
            "tfrec_towers needs Keras 2 (tf_keras) for TensorFlow Recommenders, but TensorFlow was "
            "already imported with Keras 3. Import tfrec_towers before tensorflow, or set "
            "TF_USE_LEGACY_KERAS=1 in the environment before Python starts."
        )


_use_keras2()
