"""A BEIR dataset (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) -> query -> document event logs.

The BEIR layout (Thakur et al., 2021) is shared by SciFact, NFCorpus, FiQA, TREC-COVID and the rest:
``corpus.jsonl`` holds one JSON object a line with ``_id``, ``title`` and ``text``; ``queries.jsonl``
one with ``_id`` and ``text``; ``qrels/<split>.tsv`` a header and ``query-id corpus-id score`` rows
(score >= 1: relevant). The converter writes ``writer.write_log_dataset``'s layout with these fields:

* events: ``query_id``, ``query_text`` (query side); ``item_id`` (the document ID), ``document``
  (candidate side: title and text joined by a space, as BEIR's lexical baselines index them),
  ``label`` = 1, and ``pair_source`` (``qrels``, ``title`` or ``ict``);
* items (the catalog: every document of the corpus): ``item_id``, ``document``, ``title``.

Protocols (``split``): ``test`` trains on every query of ``qrels/train.tsv`` and tests on
``qrels/test.tsv`` (the final figures); ``dev`` holds out a seeded ``dev_fraction`` of the training
queries as the test split (tuning), so that the test qrels are never touched while tuning.

Pairs from the corpus itself (``corpus_pairs``; no outside data): ``title`` pairs a document's title
(query) with its text (document); ``ict`` is the inverse cloze task of Lee et al. (ACL 2019): a random
sentence of a document's text is the query and the title with the *rest* of the text the document
(the sentence always removed, so that a pair is never solved by copying). Both go to training only,
labelled by ``pair_source``.

Bad input: a line that is not a JSON object, lacks ``_id`` or a string ``text``, or repeats an
``_id``; a qrels row without three tab-separated fields, with a non-integer score, or naming a query
or document that does not exist. Under ``policy="fail"`` the first one stops with ``file:line`` and
the reason; under ``skip`` it is dropped and counted by reason (``FileReport``). Qrels rows with a
score below 1 (judged not relevant) are counted, never an error.
"""
import json
import os
import re
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from tfrec_towers.data.user_item_lists import POLICIES, BadLine, ReadReport
from tfrec_towers.data.writer import check_out_dir, write_log_dataset

__all__ = ["BeirData", "convert_beir", "corpus_pairs", "read_beir", "sentences", "split_queries"]


SPLITS = ("dev", "test")
CORPUS_PAIRS = ("title", "ict")
EVENT_KINDS = {"query_id": "bytes", "query_text": "bytes", "item_id": "bytes", "document": "bytes",
               "label": "int64", "pair_source": "bytes"}
ITEM_KINDS = {"item_id": "bytes", "document": "bytes", "title": "bytes"}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


class FileReport(ReadReport):
    """What was read from one file: records kept, and skipped lines by reason (with the first place)."""

    def __init__(self):
        super().__init__()
        self.records = 0

    def to_dict(self) -> dict:
        return {"records": self.records, "skipped_lines": dict(self.skipped), "first_skipped": dict(self.examples)}


class BeirData:
    """A BEIR folder in memory: ``corpus`` {id: (title, text)}, ``queries`` {id: text},
    ``qrels`` {split: {query id: {document id: score}}} (relevant rows only), and ``reports`` {file: ReadReport}."""

    def __init__(self, corpus, queries, qrels, reports):
        self.corpus: Dict[str, Tuple[str, str]] = corpus
        self.queries: Dict[str, str] = queries
        self.qrels: Dict[str, Dict[str, Dict[str, int]]] = qrels
        self.reports: Dict[str, ReadReport] = reports

    def document(self, doc_id: str) -> str:
        title, text = self.corpus[doc_id]
        return f"{title} {text}".strip()


def _fail_or_skip(policy: str, report: ReadReport, reason: str, where: str, detail: str) -> None:
    if policy == "fail":
        raise BadLine(f"{where}: {detail} (use policy 'skip' to drop such lines)")
    report.skip(reason, where)


def read_jsonl(path: str, fields: Sequence[str], policy: str, report: FileReport) -> Dict[str, Dict]:
    """{_id: object} of a BEIR jsonl file; ``fields`` must be strings when present (``text`` must be)."""
    out: Dict[str, Dict] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                _fail_or_skip(policy, report, "not JSON", where, f"not a JSON object ({e.msg})")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("_id"), (str, int)):
                _fail_or_skip(policy, report, "no _id", where, "not an object with a string '_id'")
                continue
            key = str(obj["_id"])
            bad = [k for k in fields if (k == "text" or k in obj) and not isinstance(obj.get(k), str)]
            if bad:
                _fail_or_skip(policy, report, "missing or non-string field", where,
                              f"_id {key!r}: field(s) {bad} missing or not a string")
            elif key in out:
                _fail_or_skip(policy, report, "repeated _id", where, f"_id {key!r} was already listed in this file")
            else:
                out[key] = obj
                report.records += 1
    return out


def read_qrels(path: str, queries, corpus, policy: str, report: FileReport) -> Dict[str, Dict[str, int]]:
    """{query id: {document id: score}} of the relevant (score >= 1) rows of a qrels TSV."""
    out: Dict[str, Dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if number == 1 and fields[0] == "query-id":
                continue
            if not line.strip():
                continue
            where = f"{path}:{number}"
            if len(fields) != 3 or not fields[2].strip().lstrip("-").isdigit():
                _fail_or_skip(policy, report, "malformed row", where,
                              f"expected 'query-id<TAB>corpus-id<TAB>integer score', got {line.strip()[:80]!r}")
                continue
            qid, did, score = fields[0], fields[1], int(fields[2])
            if qid not in queries or did not in corpus:
                unknown = f"query {qid!r}" if qid not in queries else f"document {did!r}"
                _fail_or_skip(policy, report, "unknown id", where, f"{unknown} is not in the queries/corpus")
                continue
            if score < 1:
                report.skip("score below 1 (not relevant)", where)
                continue
            out.setdefault(qid, {})[did] = score
            report.records += 1
    return out


def read_beir(beir_dir: str, splits: Sequence[str] = ("train", "test"), policy: str = "fail",
              progress: Optional[Callable[[str], None]] = print) -> BeirData:
    """Read a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv`` for ``splits``)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    progress = progress or (lambda message: None)
    paths = {"corpus": os.path.join(beir_dir, "corpus.jsonl"), "queries": os.path.join(beir_dir, "queries.jsonl"),
             **{s: os.path.join(beir_dir, "qrels", f"{s}.tsv") for s in splits}}
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"not a BEIR folder (missing {missing}); expected corpus.jsonl, queries.jsonl "
                                f"and qrels/<split>.tsv for splits {list(splits)}")
    reports = {p: FileReport() for p in paths.values()}
    corpus = read_jsonl(paths["corpus"], ["title", "text"], policy, reports[paths["corpus"]])
    queries = read_jsonl(paths["queries"], ["text"], policy, reports[paths["queries"]])
    qrels = {s: read_qrels(paths[s], queries, corpus, policy, reports[paths[s]]) for s in splits}
    for path, r in reports.items():
        skipped = f"; skipped: {dict(r.skipped)} (first at {r.examples})" if r.skipped else ""
        progress(f"read {path}: {r.records} records{skipped}")
    return BeirData({k: (str(v.get("title") or ""), v["text"]) for k, v in corpus.items()},
                    {k: v["text"] for k, v in queries.items()}, qrels, reports)


def split_queries(query_ids: Sequence[str], dev_fraction: float, seed: int) -> Tuple[List[str], List[str]]:
    """Seeded (train, dev) partition of the training queries; dev gets round(fraction * n), at least 1."""
    ids = sorted(query_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_dev = max(1, int(round(dev_fraction * len(ids))))
    dev = sorted(ids[i] for i in order[:n_dev])
    return sorted(set(ids) - set(dev)), dev


def sentences(text: str) -> List[str]:
    """Split at ., ! or ? followed by space and a capital, digit or bracket (abbreviations like "e.g. x" stay)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def corpus_pairs(data: BeirData, kinds: Sequence[str], ict_per_doc: int, rng: np.random.Generator) -> List[Dict]:
    """Title -> text and inverse-cloze pairs of every document (see the module docstring)."""
    unknown = sorted(set(kinds) - set(CORPUS_PAIRS))
    if unknown:
        raise ValueError(f"corpus_pairs: unknown kind(s) {unknown}; known: {CORPUS_PAIRS}")
    rows = []
    for doc_id in sorted(data.corpus):
        title, text = data.corpus[doc_id]
        if "title" in kinds and title.strip() and text.strip():
            rows.append({"query_id": f"title:{doc_id}", "query_text": title, "item_id": doc_id, "document": text,
                         "pair_source": "title"})
        parts = sentences(text) if "ict" in kinds else []
        if len(parts) < 2:
            continue
        for j in sorted(rng.choice(len(parts), size=min(ict_per_doc, len(parts)), replace=False)):
            rest = " ".join(parts[:j] + parts[j + 1:])
            rows.append({"query_id": f"ict:{doc_id}:{j}", "query_text": parts[j], "item_id": doc_id,
                         "document": f"{title} {rest}".strip(), "pair_source": "ict"})
    return rows


def _qrels_rows(data: BeirData, qrels: Dict[str, Dict[str, int]], query_ids: Sequence[str]) -> List[Dict]:
    return [{"query_id": q, "query_text": data.queries[q], "item_id": d, "document": data.document(d),
             "pair_source": "qrels"} for q in query_ids for d in sorted(qrels.get(q, {}))]


def _frame(rows: List[Dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["query_id", "query_text", "item_id", "document", "pair_source"])
    df.insert(4, "label", np.ones(len(df), dtype=np.int64))
    return df


def convert_beir(beir_dir: str, out_dir: str, split: str = "test", dev_fraction: float = 0.2,
                 corpus_pairs_kinds: Sequence[str] = (), ict_per_doc: int = 1, policy: str = "fail", seed: int = 0,
                 num_shards: int = 1, overwrite: bool = False, name: str = "",
                 progress: Optional[Callable[[str], None]] = print) -> dict:
    """Convert a BEIR folder to train/test query -> document logs and the document catalog; returns the metadata.

    Args:
      split: ``test`` (train on qrels/train.tsv, test on qrels/test.tsv) or ``dev`` (train on the
        training queries but a held-out ``dev_fraction``, test on those: for tuning).
      dev_fraction: share of the training queries held out by ``dev`` (seeded by ``seed``); 0.2
        keeps ~160 of SciFact's 809 claims, enough to rank configurations.
      corpus_pairs_kinds: ``title`` and/or ``ict`` pairs made from the corpus, added to training.
      ict_per_doc: sentences drawn per document for ``ict`` (1: one pair per document, so every
        document weighs the same).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    if ict_per_doc < 1:
        raise ValueError(f"ict_per_doc must be >= 1, got {ict_per_doc}")
    check_out_dir(out_dir, overwrite)
    progress = progress or (lambda message: None)
    started = time.time()
    data = read_beir(beir_dir, ("train", "test") if split == "test" else ("train",), policy, progress)
    train_qrels = data.qrels["train"]
    if split == "test":
        train_ids, test_ids, test_qrels = sorted(train_qrels), sorted(data.qrels["test"]), data.qrels["test"]
    else:
        train_ids, test_ids = split_queries(list(train_qrels), dev_fraction, seed)
        test_qrels = train_qrels
    rng = np.random.default_rng(seed)
    train_rows = _qrels_rows(data, train_qrels, train_ids) + corpus_pairs(data, corpus_pairs_kinds, ict_per_doc, rng)
    train = _frame(train_rows)
    train = train.iloc[rng.permutation(len(train))].reset_index(drop=True)
    test = _frame(_qrels_rows(data, test_qrels, test_ids))
    items = pd.DataFrame({"item_id": sorted(data.corpus)})
    items["document"] = [data.document(d) for d in items["item_id"]]
    items["title"] = [data.corpus[d][0] for d in items["item_id"]]
    sources = train["pair_source"].value_counts().to_dict()
    progress(f"{len(train)} training pairs {sources}, {len(test)} test pairs of {len(test_ids)} queries, "
             f"catalog of {len(items)} documents")
    metadata = {"source": name or os.path.basename(os.path.abspath(beir_dir)), "format": "BEIR",
                "beir_dir": os.path.abspath(beir_dir), "split": split, "policy": policy, "seed": seed,
                "dev_fraction": dev_fraction if split == "dev" else None,
                "corpus_pairs": list(corpus_pairs_kinds), "ict_per_doc": ict_per_doc,
                "train_pairs_by_source": {str(k): int(v) for k, v in sources.items()},
                "train_queries": len(train_ids), "test_queries": len(test_ids), "test_query_ids": test_ids,
                "skipped_lines": sum(sum(r.skipped.values()) for r in data.reports.values()),
                "read": {p: r.to_dict() for p, r in data.reports.items()}}
    meta = write_log_dataset(out_dir, train, test, items, metadata, num_shards=num_shards, overwrite=overwrite,
                             progress=progress, kinds={**EVENT_KINDS, **ITEM_KINDS})
    progress(f"converted {metadata['source']} in {time.time() - started:.1f}s")
    return meta
