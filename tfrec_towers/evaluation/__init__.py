"""Evaluation: ``scoring`` and ``metrics`` (exact catalog scoring and the metric functions, NumPy only),
``embeddings`` (a trained run's towers applied to a catalog or to events), ``job`` (evaluate a run or an
export on eval logs, ``tfrec-towers evaluate``) and ``embedding_report`` (the query/item embedding-space
report). Import the submodules: this package imports none of them, so that ``metrics`` loads without
TensorFlow."""
