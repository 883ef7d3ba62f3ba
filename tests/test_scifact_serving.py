"""SciFact claims through the served text towers: `tfrec-towers beir` -> train (scifact.yaml) -> export
with the portable index -> `tfrec-towers serve` on 127.0.0.1 -> gRPC top-10 equals the in-process
exact top-10 of the trained Keras model. Skipped without the dataset (``$TFREC_TOWERS_SCIFACT``,
default ``<repo>/../shared/datasets/scifact``; licensed, read by path, never copied into the repo)."""
import os

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import pytest
from cli_helpers import serve_in_subprocess

from tfrec_towers.config import Config, packaged
from tfrec_towers.data.beir import convert_beir, read_beir
from tfrec_towers.evaluation.embeddings import embed_catalog
from tfrec_towers.export.exporter import export_run
from tfrec_towers.run import load_model
from tfrec_towers.serving import RetrievalClient
from tfrec_towers.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("TFREC_TOWERS_SCIFACT", os.path.join(REPO, "..", "shared", "datasets", "scifact"))
K = 10
CLAIMS = 60
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(DATA, "corpus.jsonl")),
                                reason=f"SciFact not found at {DATA} (set TFREC_TOWERS_SCIFACT)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("scifact")
    meta = convert_beir(DATA, str(root / "data"), split="test", progress=None)
    # The shipped configuration (SDE, tfidf trigram towers), one epoch on the qrels pairs: enough to
    # move the towers away from their start, short enough for CI.
    config = Config.load(packaged("scifact")).with_overrides(["train.epochs=1"])
    run_dir = str(root / "run")
    train(config, meta["files"]["train"], run_dir, None, meta["files"]["items"], verbose=0, progress=lambda m: None)
    # Every partition probed: the portable index is then exact but for int8 pre-scoring ahead of the
    # exact re-rank of its 100 best, so its top-10 must equal the exact one.
    export_run(run_dir, str(root / "models"), "scifact", index="portable", k=K,
               index_params={"num_partitions": 16, "num_probe": 16}, log=lambda m: None)
    beir = read_beir(DATA, progress=None)
    claims = sorted(beir.qrels["test"])[:CLAIMS]
    return {"root": root, "run_dir": run_dir, "config": config, "files": meta["files"], "beir": beir,
            "claims": claims, "texts": [beir.queries[q] for q in claims]}


def in_process_top_k(served):
    model = load_model(served["run_dir"])
    doc_ids, docs = embed_catalog(model, served["config"], served["files"]["items"], progress=lambda m: None)
    queries = model.query_tower({"query_text": np.array(served["texts"], dtype=object)}).numpy()
    scores = queries @ docs.T
    return doc_ids[np.argsort(-scores, axis=1, kind="stable")[:, :K]].astype(str), scores


def test_grpc_top10_of_claim_texts_equals_the_in_process_ranking(served):
    expected, scores = in_process_top_k(served)
    with serve_in_subprocess(str(served["root"] / "models")) as server:
        assert server.output().count("127.0.0.1") >= 1  # loopback by default
        with RetrievalClient(f"127.0.0.1:{server.grpc_port}", "scifact", timeout_s=60) as client:
            answers = [client.top_k({"query_text": np.array(served["texts"][i:i + 20], dtype=object)})
                       for i in range(0, CLAIMS, 20)]
    got = np.concatenate([a.item_ids for a in answers])
    assert got.shape == (CLAIMS, K)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(np.concatenate([a.scores for a in answers]), -np.sort(-scores, axis=1)[:, :K],
                               rtol=1e-4, atol=1e-5)
    # The ranking is a real one: most claims find a relevant abstract in their top 10.
    relevant = [served["beir"].qrels["test"][q] for q in served["claims"]]
    recall = np.mean([len(set(row) & set(rel)) / len(rel) for row, rel in zip(got.tolist(), relevant)])
    assert recall >= 0.6, recall
    assert server.returncode == 0
