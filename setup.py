"""tfrec_towers: two-tower (DSSM-style) retrieval from TFRecord logs with TensorFlow Recommenders."""
from setuptools import find_packages, setup

# Ranges, not pins: the core works on TensorFlow 2.20 and 2.21, so the package installs with pip into a
# TFX 1.21 environment (which needs TF 2.21). tf-keras and tensorflow-text follow TensorFlow's minor version
# (each release requires its own), so their ranges move with it.
# The exact verified set (TF 2.20 with scann) is constraints.txt: pip install -c constraints.txt '.[scann]'.
CORE = [
    "tensorflow>=2.20,<2.22",
    "tf-keras>=2.20,<2.22",
    "tensorflow-recommenders>=0.7.7,<0.8",
    "tensorflow-text>=2.20,<2.22",
    "tensorflow-serving-api>=2.19.1,<2.22",  # protos and gRPC stubs only; TFX 1.21 (tfx-bsl) holds it at 2.19
    "tensorboard",  # training writes TensorBoard logs; TensorFlow 2.21 no longer requires it
    "apache-beam>=2.60,<3",
    "pandas",
    "pyyaml",
    "filelock>=3.12",  # the run directory's lock (flock on POSIX)
    "matplotlib",
]

# ScaNN (``--index scann``) is an extra: scann 1.4.2's TF ops load on TensorFlow 2.20 only (on 2.21 they
# fail with an undefined absl symbol, and TFRS, which imports scann when present, then fails to import),
# and scann's own metadata pins TensorFlow only under its "tf" extra, so the TF 2.20 bound is stated here.
SCANN = ["scann==1.4.2", "tensorflow>=2.20,<2.21"]

setup(
    name="tfrec_towers",
    version="0.1.0",
    description="Two-tower retrieval from TFRecord event logs with TensorFlow Recommenders",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.14",
    # Only the library is installed: pipelines/, serving/, benchmarks/ and tests/ stay in the
    # checkout so that no generic top-level name (e.g. `serving`) lands in site-packages.
    packages=find_packages(include=["tfrec_towers", "tfrec_towers.*"]),
    package_data={"tfrec_towers": ["configs/*.yaml"]},
    install_requires=CORE,
    # import-linter: tests/test_architecture.py; benchmark: the peers of benchmarks/ (gowalla.py's ALS;
    # scifact.py's BM25, TF-IDF and trec_eval scoring)
    extras_require={"scann": SCANN, "test": ["pytest", "import-linter"],
                    "benchmark": ["implicit==0.7.3", "bm25s==0.3.16", "PyStemmer==3.1.0", "pytrec-eval-terrier==0.5.11",
                                  "scikit-learn>=1.5"]},
    entry_points={"console_scripts": ["tfrec-towers=tfrec_towers.cli:main"]},
)
