"""``export`` and ``refresh-items``: a trained run -> a new TF Serving version BASE/NAME/<timestamp>/.

Both write one SavedModel (``retrieval_module.py``) holding the user tower and an index of item
embeddings computed by the same weights. ``refresh-items`` re-embeds a new or changed catalog with
the weights of the latest version (checked by fingerprint) and writes a new version: the user side
is unchanged, the index rebuilt, and no version ever mixes two models.

Metadata (``assets/tfrec_towers.json``, also served by the ``metadata`` signature): model name and
version, the run directory and a fingerprint of its weights, the feature spec, the index type and
parameters, k, max-k (the filtered signatures' largest k) and, for the approximate indexes, the probe
schedule of filtered requests, the item catalog (files, size, fingerprint of ids and embeddings) and
the popularity prior's logs, weight and counts, if any (``popularity_prior.py``).

Warm-up (``assets.extra/tf_serving_warmup_requests``): PredictionLog records of real requests, built
from the run's eval (else train) examples and the catalog, which TF Serving and ``tfrec-towers serve``
replay on load so that a new version's first requests do not pay TensorFlow's lazy initialization
(seconds, against milliseconds warm).
"""
import datetime
import glob
import hashlib
import json
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

import tfrec_towers
from tfrec_towers.data import reader
from tfrec_towers.data.inputs import item_counts
from tfrec_towers.evaluation.embeddings import embed_catalog
from tfrec_towers.export.indexes import build_index, index_class
from tfrec_towers.export.layout import METADATA_ASSET, METADATA_FILE, WARMUP_FILE, latest_version
from tfrec_towers.export.popularity_prior import DEFAULT_WEIGHT, check_weight, new_item_weight, run_prior, with_prior
from tfrec_towers.export.retrieval_module import (ALLOWED_INPUT, EXCLUDE_INPUT, FILTERED_SIGNATURES, K_INPUT,
                                                  RetrievalModule, prior_queries)
from tfrec_towers.export.versions import staged_version
from tfrec_towers.features.spec import FeatureSpec
from tfrec_towers.run import RunDir, load_model

__all__ = ["WARMUP_ROWS", "export_run", "read_metadata", "refresh_items", "weights_fingerprint"]


#: Namespaced custom ops allowed in an export: ScaNN's (``Scann>...``) and tensorflow-text's.
NAMESPACES = ["Scann", "TFText"]
#: Rows of the larger warm-up request of each signature (the other has one row, the common case):
#: enough to run every op on a real batch, few enough to keep the file small and the load fast.
WARMUP_ROWS = 8
#: Signatures warmed up, by the side whose examples feed them. Not ``score`` or ``metadata``: with TF
#: Serving's --enable_batching they fail (serving/README.md), and a failing warm-up fails the load.
WARMUP_SIGNATURES = {"query": ("serving_default", "user_embedding"), "candidate": ("item_embedding",)}
#: Items each filtered warm-up row excludes (its own best ones, so the deeper second pass runs too) and allows.
WARMUP_EXCLUDED, WARMUP_ALLOWED = 8, 16


def weights_fingerprint(run_dir: str) -> str:
    """sha256 of the run's final weights files: identifies the model a version was built from."""
    files = sorted(glob.glob(RunDir(run_dir).weights + ".*"))
    if not files:
        raise FileNotFoundError(f"{run_dir} has no final weights: did training finish?")
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def catalog_fingerprint(ids: np.ndarray, embeddings: np.ndarray) -> str:
    digest = hashlib.sha256("\n".join(map(str, ids)).encode())
    digest.update(np.ascontiguousarray(embeddings, np.float32).tobytes())
    return digest.hexdigest()


def read_metadata(version_dir: str) -> Dict:
    path = os.path.join(version_dir, METADATA_ASSET)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{version_dir} is not an export of tfrec_towers (no {METADATA_ASSET})")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _sample_records(pattern: Optional[str], spec: Dict, compression: str, count: int) -> List[bytes]:
    """Up to ``count`` records of ``pattern`` that parse with ``spec``; none if it cannot be read."""
    records = []
    try:
        files = reader.list_files(pattern) if pattern else []
    except FileNotFoundError:
        return records
    for path in files:
        dataset = reader.record_dataset(path, compression)  # stops before a damaged frame
        try:
            for raw in dataset.take(4 * count):
                try:
                    tf.io.parse_example([raw], spec)
                except tf.errors.InvalidArgumentError:  # a corrupt or foreign record: not a sample
                    continue
                records.append(raw.numpy())
                if len(records) == count:
                    return records
        except tf.errors.OpError:  # an unreadable file: try the next one
            continue
    return records


def _blank_example(features: FeatureSpec, side: str) -> bytes:
    """A tf.Example with "" / 0 for every feature of ``side``: the warm-up input when no example can be read."""
    example = tf.train.Example()
    for feature in features.side(side):
        values = example.features.feature[feature.name]
        if feature.dtype == "string":
            values.bytes_list.value.append(b"")
        elif feature.dtype == "int64":
            values.int64_list.value.append(0)
        else:
            values.float_list.value.append(0.0)
    return example.SerializeToString()


def _predict_log(model_name: str, signature: str, inputs: Dict[str, np.ndarray]) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model_name, signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def _with_filters(record: bytes, k: int, exclude: Sequence[bytes], allowed: Optional[Sequence[bytes]]) -> bytes:
    """A query tf.Example with the filtered signatures' fields added (``retrieval_module.filter_parse_spec``)."""
    example = tf.train.Example.FromString(record)
    fields = example.features.feature
    fields[K_INPUT].CopyFrom(tf.train.Feature(int64_list=tf.train.Int64List(value=[k])))
    fields[EXCLUDE_INPUT].CopyFrom(tf.train.Feature(bytes_list=tf.train.BytesList(value=list(exclude))))
    if allowed is not None:
        fields[ALLOWED_INPUT].CopyFrom(tf.train.Feature(bytes_list=tf.train.BytesList(value=list(allowed))))
    return example.SerializeToString()


def _padded(rows: Sequence[Sequence[bytes]]) -> np.ndarray:
    out = np.full((len(rows), max([len(r) for r in rows] + [1])), b"", dtype=object)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def warmup_requests(features: FeatureSpec, model_name: str, samples: Dict[str, Sequence[bytes]],
                    filters: Optional[Dict] = None) -> List[prediction_log_pb2.PredictionLog]:
    """TF Serving warm-up records: for each side's serialized examples (``samples``: query, candidate), a
    one-row and a full request to each of its signatures and their ``_examples`` variants.

    ``filters`` (``max_k``, ``exclude``: a function of the query rows' inputs -> their excluded IDs, and
    ``allowed``: IDs) adds the same requests to the filtered signatures, in the form TF Serving's batching
    accepts (``k`` [B], ``allowed_item_ids`` [B, A]: every input batched).
    """
    logs = []
    for side, signatures in WARMUP_SIGNATURES.items():
        records = list(samples.get(side) or []) or [_blank_example(features, side)]
        for rows in ([records[0]], records) if len(records) > 1 else ([records[0]],):
            inputs = features.prepare(tf.io.parse_example(rows, features.parse_spec(side)))
            inputs = {key: value.numpy() for key, value in inputs.items()}
            for signature in signatures:
                logs.append(_predict_log(model_name, signature, inputs))
                logs.append(_predict_log(model_name, f"{signature}_examples", {"examples": np.array(rows, object)}))
            if side != "query" or not filters:
                continue
            exclude = filters["exclude"](inputs)
            allowed = list(filters["allowed"])
            for signature, with_allowed in FILTERED_SIGNATURES.items():
                extra = {K_INPUT: np.full([len(rows)], filters["max_k"], np.int32), EXCLUDE_INPUT: _padded(exclude)}
                if with_allowed:
                    extra[ALLOWED_INPUT] = _padded([allowed] * len(rows))
                logs.append(_predict_log(model_name, signature, {**inputs, **extra}))
                examples = [_with_filters(r, filters["max_k"], e, allowed if with_allowed else None)
                            for r, e in zip(rows, exclude)]
                logs.append(_predict_log(model_name, f"{signature}_examples", {"examples": np.array(examples, object)}))
    return logs  # 20 records, far below TF Serving's MAX_WARMUP_RECORDS


def write_warmup(version_dir: str, logs: Sequence[prediction_log_pb2.PredictionLog]) -> str:
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def export_run(run_dir: str, base_dir: str, name: str, index: str = "portable", k: int = 100,
               items: Optional[str] = None, index_params: Optional[Dict] = None, log=print,
               refreshed_from: Optional[int] = None, catalog: Optional[Tuple[np.ndarray, np.ndarray]] = None,
               max_k: Optional[int] = None, popularity_logs: Optional[str] = None,
               popularity_weight: float = DEFAULT_WEIGHT) -> str:
    """Export ``run_dir`` as a new version of BASE/NAME; returns the version directory.

    Args:
      index: ``portable`` (default: stock TF ops, loads in stock TF Serving), ``scann`` or ``brute``.
      k: items returned per query by ``serving_default`` (at most the catalog size).
      max_k: the largest ``k`` a request to the filtered signatures may ask for, and their output width
        (default: k; at most the catalog size). The index is tuned for max(k, max_k).
      items: item-catalog TFRecord glob; default: the run's ``items`` files.
      index_params: num_partitions / num_probe / num_rerank overrides (``portable``, ``scann``).
      refreshed_from: the version whose model this re-exports over a new catalog (``refresh_items``).
      catalog: (ids, embeddings) of ``items`` computed elsewhere with this run's item tower (the Beam
        refresh job); by default they are computed here.
      popularity_logs: glob of logs in the run's schema (e.g. the last days'): the top-k signatures rank by
        ``q . v + popularity_weight * log(1 + the item's positive events there)`` (``popularity_prior.py``;
        a weight of 0: no prior).
    """
    index_class(index)  # an unknown type fails now, not after embedding the catalog
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_k is not None and max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    run = RunDir(run_dir)
    info = run.info()
    items = items or info.get("items")
    if not items:
        raise ValueError(f"{run.path} records no item catalog: pass items (a TFRecord glob of the catalog)")
    fingerprint = weights_fingerprint(run.path)
    config = run.config()
    model = load_model(run.path)
    counts = None
    if popularity_logs and check_weight(popularity_weight) != 0:  # bad logs or weight fail before the embedding
        counts = item_counts(config, popularity_logs, log)
    if catalog is None:
        log(f"embedding the item catalog {items}")
        ids, embeddings = embed_catalog(model, config, items, progress=log)
    else:
        ids, embeddings = np.asarray(catalog[0]), np.asarray(catalog[1], np.float32)
    prior_info, vectors = None, embeddings
    if counts is not None:
        prior, known = run_prior(ids, counts, popularity_weight, config, run.stats())
        vectors, unknown_weight = with_prior(embeddings, prior), new_item_weight(config)
        in_catalog = [counts.get(str(i), 0) for i in ids]
        new_items = 0 if known is None else int(np.count_nonzero(~known))
        prior_info = {"logs": popularity_logs, "weight": popularity_weight, "events": int(sum(counts.values())),
                      "catalog_items_with_events": int(np.count_nonzero(in_catalog)),
                      "events_of_items_not_in_catalog": int(sum(counts.values()) - sum(in_catalog)),
                      "new_items": new_items, "new_item_weight": unknown_weight if new_items else None}
        log(f"popularity prior: {prior_info['events']} events of {prior_info['catalog_items_with_events']} "
            f"catalog items in {popularity_logs}, weight {popularity_weight}"
            + (f" ({new_items} items without an ID row: {unknown_weight})" if new_items and unknown_weight else ""))
    log(f"building the {index} index over {len(ids)} items")
    built = build_index(index, ids, vectors, k, max_k=max_k, **(index_params or {}))
    metadata = {
        "model_name": name, "run_dir": run.path, "weights_fingerprint": fingerprint,
        "feature_spec": config.features.to_dict(), "embedding_dim": int(embeddings.shape[1]),
        "index": {"type": index, "k": built.k, "requested_k": k, "max_k": built.max_k, "requested_max_k": max_k,
                  "params": built.params, **({"probe_schedule": built.schedule.to_dict()} if built.schedule else {})},
        "catalog": {"items": items, "num_items": len(ids), "fingerprint": catalog_fingerprint(ids, embeddings)},
        "tfrec_towers": tfrec_towers.__version__, "tensorflow": tf.__version__,
    }
    if prior_info:
        metadata["popularity_prior"] = prior_info
    if refreshed_from is not None:
        metadata["refreshed_from"] = refreshed_from

    def sample(pattern, side):
        return _sample_records(pattern, config.features.parse_spec(side), config.data.compression, WARMUP_ROWS)

    def best_ids(inputs):  # each warm-up row excludes its own best items
        queries = model.query_tower({key: tf.constant(value) for key, value in inputs.items()}, training=False)
        _, top = built(prior_queries(queries) if prior_info else queries)
        return [[i for i in row if i][:WARMUP_EXCLUDED] for row in top.numpy().tolist()]

    warmup = warmup_requests(config.features, name, {
        "query": sample(info.get("eval"), "query") or sample(info.get("train"), "query"),
        "candidate": sample(items, "candidate")},
        filters={"max_k": built.max_k, "exclude": best_ids,
                 "allowed": [str(i).encode() for i in ids[:WARMUP_ALLOWED]]})
    with staged_version(base_dir, name, log) as (tmp, version), tempfile.TemporaryDirectory() as meta_dir:
        metadata.update(version=version, created=datetime.datetime.now(datetime.timezone.utc).isoformat())
        meta_path = os.path.join(meta_dir, METADATA_FILE)
        with open(meta_path, "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
        module = RetrievalModule(config.features, model.query_tower, model.candidate_tower, built, meta_path,
                                 prior=bool(prior_info))
        signatures = module.signatures()
        log(f"saving the SavedModel (signatures: {', '.join(signatures)})")
        tf.saved_model.save(module, tmp, signatures=signatures,
                            options=tf.saved_model.SaveOptions(namespace_whitelist=NAMESPACES))
        log(f"writing {len(warmup)} warm-up requests to {WARMUP_FILE}")
        write_warmup(tmp, warmup)
    out = os.path.join(os.path.abspath(base_dir), name, str(version))
    log(f"wrote {out} ({index} index, {len(ids)} items, k={built.k}, max-k={built.max_k})")
    return out


def refresh_items(base_dir: str, name: str, items: str, run_dir: Optional[str] = None, index: Optional[str] = None,
                  k: Optional[int] = None, index_params: Optional[Dict] = None, log=print,
                  catalog: Optional[Tuple[np.ndarray, np.ndarray]] = None, from_version: Optional[int] = None,
                  max_k: Optional[int] = None, popularity_logs: Optional[str] = None,
                  popularity_weight: Optional[float] = None) -> str:
    """A new version of BASE/NAME: the latest version's model over the catalog ``items``.

    The run directory defaults to the one recorded in the latest version; its weights must still be
    the ones that version was built from, else this refuses (use ``export_run`` for a new model).
    Index type, k and max_k default to the latest version's; partition parameters are re-tuned to the new
    catalog size unless given. ``catalog``: precomputed (ids, embeddings), as in ``export_run``;
    ``from_version``: the version they were computed with, which must still be the latest.
    The popularity prior's logs and weight default to the latest version's (its logs counted again: a
    date glob that names the last days picks up the new ones).
    """
    model_dir = os.path.join(os.path.abspath(base_dir), name)
    latest = latest_version(model_dir)
    if latest is None:
        raise FileNotFoundError(f"{model_dir} has no version to refresh: run `tfrec-towers export` first")
    if from_version is not None and latest != from_version:
        raise ValueError(f"version {latest} of {model_dir} appeared after the catalog was embedded with version "
                         f"{from_version}: run the refresh again")
    previous = read_metadata(os.path.join(model_dir, str(latest)))
    prior = previous.get("popularity_prior") or {}
    run_dir = run_dir or previous["run_dir"]
    fingerprint = weights_fingerprint(run_dir)
    if fingerprint != previous["weights_fingerprint"]:
        raise ValueError(
            f"the weights in {run_dir} are not those of version {latest} (fingerprint {fingerprint[:12]} != "
            f"{previous['weights_fingerprint'][:12]}): refresh-items keeps the model fixed and only "
            "rebuilds the index; use `tfrec-towers export` to publish a new model")
    return export_run(run_dir, base_dir, name, index=index or previous["index"]["type"],
                      k=k or previous["index"]["requested_k"], items=items, index_params=index_params, log=log,
                      refreshed_from=latest, catalog=catalog,
                      max_k=max_k or previous["index"].get("requested_max_k"),
                      popularity_logs=popularity_logs or prior.get("logs"),
                      popularity_weight=prior.get("weight", DEFAULT_WEIGHT) if popularity_weight is None
                      else popularity_weight)
