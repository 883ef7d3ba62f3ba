"""tfrec_towers: two-tower (DSSM-style) retrieval from TFRecord logs with TensorFlow Recommenders."""
from setuptools import find_packages, setup

# The core pin set verified together in ../shared/STACK.md. TensorFlow must stay at 2.20:
# scann 1.4.2's TF ops fail to load on 2.21 and TFRS then fails to import entirely.
CORE = [
    "tensorflow==2.20.0",
    "tf-keras==2.20.1",
    "tensorflow-recommenders==0.7.7",
    "tensorflow-text==2.20.1",
    "scann==1.4.2",
    "tensorflow-serving-api==2.20.0",
    "apache-beam==2.77.0",
    "pandas",
    "pyyaml",
    "matplotlib",
]

setup(
    name="tfrec_towers",
    version="0.1.0",
    description="Two-tower retrieval from TFRecord event logs with TensorFlow Recommenders",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.13",
    # Only the library is installed: pipelines/, serving/, benchmarks/ and tests/ stay in the
    # checkout so that no generic top-level name (e.g. `serving`) lands in site-packages.
    packages=find_packages(include=["tfrec_towers", "tfrec_towers.*"]),
    package_data={"tfrec_towers": ["configs/*.yaml"]},
    install_requires=CORE,
    extras_require={"test": ["pytest"], "benchmark": ["implicit==0.7.3"]},  # benchmark: benchmarks/gowalla.py's ALS peer
    entry_points={"console_scripts": ["tfrec-towers=tfrec_towers.cli:main"]},
)
