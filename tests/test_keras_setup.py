"""Importing the package sets up Keras 2 for TFRS, or fails clearly where that is impossible."""
import os
import subprocess
import sys


def run(code: str, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    environment.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment)


def test_import_sets_up_keras2_for_tfrs():
    result = run("import tfrec_towers, tensorflow as tf, tensorflow_recommenders; "
                 "import tf_keras; assert tf.keras.layers.Dense is tf_keras.layers.Dense; print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_keras3_already_bound_fails_with_a_clear_message():
    result = run("import tensorflow as tf; tf.keras.layers; import tfrec_towers")
    assert result.returncode != 0
    assert "needs Keras 2" in result.stderr and "TF_USE_LEGACY_KERAS=1" in result.stderr
