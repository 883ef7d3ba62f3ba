"""`tfrec-towers beir`: a BEIR folder -> query -> document logs, the protocols, corpus pairs and bad input."""
import glob
import json
import os

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import pytest
import tensorflow as tf

from tfrec_towers.cli import main
from tfrec_towers.data.beir import BadLine, convert_beir, read_beir, sentences, split_queries

CORPUS = [
    {"_id": "d1", "title": "Aspirin and the heart", "text": "Aspirin lowers the risk of stroke. It thins the blood."},
    {"_id": "d2", "title": "Vitamin D", "text": "Vitamin D deficiency is common in winter. Sunlight makes it."},
    {"_id": "d3", "title": "", "text": "A single sentence without a title."},
    {"_id": "d4", "title": "Sleep", "text": "Sleep loss impairs memory. Naps help! Do they? Yes."},
]
QUERIES = {"q1": "aspirin reduces stroke", "q2": "vitamin d in winter", "q3": "sleep and memory",
           "q4": "blood thinning", "q5": "naps", "t1": "stroke risk", "t2": "memory"}
TRAIN = [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d4", 1), ("q4", "d1", 1), ("q5", "d4", 1), ("q5", "d3", 0)]
TEST = [("t1", "d1", 1), ("t2", "d4", 2)]


def write_beir(root, corpus=CORPUS, queries=QUERIES, train=TRAIN, test=TEST, corpus_lines=(), qrels_lines=()):
    os.makedirs(root / "qrels", exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in corpus)
        f.writelines(line + "\n" for line in corpus_lines)
    with open(root / "queries.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items())
    for name, rows in (("train", train), ("test", test)):
        with open(root / "qrels" / f"{name}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in rows)
            if name == "train":
                f.writelines(line + "\n" for line in qrels_lines)
    return str(root)


def records(pattern):
    out = []
    for path in sorted(glob.glob(pattern)):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(raw.numpy())
            out.append({k: (v.bytes_list.value[0].decode() if v.bytes_list.value else v.int64_list.value[0])
                        for k, v in example.features.feature.items()})
    return out


def test_test_protocol_writes_qrels_pairs_and_the_whole_corpus(tmp_path):
    meta = convert_beir(write_beir(tmp_path / "beir"), str(tmp_path / "out"), split="test", progress=None)
    train, test, items = (records(meta["files"][s]) for s in ("train", "test", "items"))
    assert sorted((r["query_id"], r["item_id"]) for r in train) == sorted((q, d) for q, d, s in TRAIN if s >= 1)
    assert {r["pair_source"] for r in train} == {"qrels"} and {r["label"] for r in train} == {1}
    q1 = next(r for r in train if r["query_id"] == "q1")
    assert q1["query_text"] == QUERIES["q1"] and q1["document"] == f"{CORPUS[0]['title']} {CORPUS[0]['text']}"
    assert sorted((r["query_id"], r["item_id"]) for r in test) == [("t1", "d1"), ("t2", "d4")]
    assert [r["item_id"] for r in items] == ["d1", "d2", "d3", "d4"]
    assert items[2]["document"] == CORPUS[2]["text"] and items[0]["title"] == CORPUS[0]["title"]
    assert meta["read"][str(tmp_path / "beir" / "qrels" / "train.tsv")]["skipped_lines"] == {
        "score below 1 (not relevant)": 1}


def test_dev_protocol_holds_out_training_queries_and_never_reads_test_qrels(tmp_path):
    root = write_beir(tmp_path / "beir")
    os.remove(os.path.join(root, "qrels", "test.tsv"))  # dev must not need it
    meta = convert_beir(root, str(tmp_path / "out"), split="dev", dev_fraction=0.4, seed=3, progress=None)
    train_q = {r["query_id"] for r in records(meta["files"]["train"])}
    test_q = {r["query_id"] for r in records(meta["files"]["test"])}
    assert len(test_q) == 2 and not train_q & test_q and train_q | test_q == {"q1", "q2", "q3", "q4", "q5"}
    assert split_queries(["q1", "q2", "q3", "q4", "q5"], 0.4, 3)[1] == sorted(test_q) == meta["test_query_ids"]
    ids = ["q1", "q2", "q3", "q4", "q5"]
    assert split_queries(ids[::-1], 0.4, 3) == split_queries(ids, 0.4, 3)  # the order given does not matter


def test_corpus_pairs_title_and_inverse_cloze_never_contain_the_query(tmp_path):
    meta = convert_beir(write_beir(tmp_path / "beir"), str(tmp_path / "out"), split="test",
                        corpus_pairs_kinds=["title", "ict"], ict_per_doc=2, progress=None)
    train = records(meta["files"]["train"])
    titles = [r for r in train if r["pair_source"] == "title"]
    assert sorted(r["item_id"] for r in titles) == ["d1", "d2", "d4"]  # d3 has no title
    assert all(r["document"] == next(d["text"] for d in CORPUS if d["_id"] == r["item_id"]) for r in titles)
    ict = [r for r in train if r["pair_source"] == "ict"]
    assert sorted(r["item_id"] for r in ict) == ["d1", "d1", "d2", "d2", "d4", "d4"]  # d3: one sentence only
    for r in ict:
        assert r["query_text"] not in r["document"] and r["query_text"] in next(
            d["text"] for d in CORPUS if d["_id"] == r["item_id"])
    assert meta["train_pairs_by_source"] == {"qrels": 5, "title": 3, "ict": 6}
    assert sentences("Sleep loss impairs memory. Naps help! Do they? Yes.") == [
        "Sleep loss impairs memory.", "Naps help!", "Do they?", "Yes."]
    assert sentences("Doses, e.g. low ones, were used. Fine.") == ["Doses, e.g. low ones, were used.", "Fine."]


@pytest.mark.parametrize("corpus_lines, qrels_lines, where, reason", [
    (["{not json"], [], "corpus.jsonl:5", "not a JSON object"),
    (['{"_id": "d9", "title": "x"}'], [], "corpus.jsonl:5", "field(s) ['text'] missing or not a string"),
    (['{"_id": "d1", "text": "again"}'], [], "corpus.jsonl:5", "_id 'd1' was already listed"),
    (['["a list"]'], [], "corpus.jsonl:5", "not an object with a string '_id'"),
    ([], ["q1\tnope\t1"], "train.tsv:8", "document 'nope' is not in the queries/corpus"),
    ([], ["q1\td1\thigh"], "train.tsv:8", "expected 'query-id<TAB>corpus-id<TAB>integer score'"),
    ([], ["q1 d1 1"], "train.tsv:8", "expected 'query-id<TAB>corpus-id<TAB>integer score'"),
])
def test_bad_lines_fail_naming_file_and_line_or_are_counted_under_skip(tmp_path, corpus_lines, qrels_lines, where,
                                                                       reason):
    root = write_beir(tmp_path / "beir", corpus_lines=corpus_lines, qrels_lines=qrels_lines)
    with pytest.raises(BadLine) as e:
        read_beir(root, policy="fail", progress=None)
    assert where in str(e.value) and reason in str(e.value)
    data = read_beir(root, policy="skip", progress=None)
    skipped = sum(sum(r.skipped.values()) for r in data.reports.values())
    assert skipped == 2  # the bad line and the score-0 row
    assert sorted(data.corpus) == ["d1", "d2", "d3", "d4"] and data.corpus["d1"][1] == CORPUS[0]["text"]


def test_a_folder_that_is_not_beir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a BEIR folder.*corpus.jsonl"):
        read_beir(str(tmp_path), progress=None)


def test_cli_converts_and_refuses_a_non_empty_output(tmp_path, capsys):
    root = write_beir(tmp_path / "beir")
    out = tmp_path / "out"
    assert main(["beir", root, "--out", str(out), "--split", "dev", "--corpus-pairs", "title,ict"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["split"] == "dev" and meta["corpus_pairs"] == ["title", "ict"] and meta["num_items"] == 4
    capsys.readouterr()
    assert main(["beir", root, "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    bad = write_beir(tmp_path / "bad", qrels_lines=["q1\tnope\t1"])
    assert main(["beir", bad, "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "train.tsv:8" in err and "document 'nope'" in err and not os.path.exists(tmp_path / "out2")
