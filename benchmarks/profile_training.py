"""Where a training step's time goes: input pipeline, towers, in-batch softmax, the rest of the task, metrics.

One process, one model (built by ``tfrec_towers.train.build_trainable``, as ``train`` builds it), the
same ``--steps`` batches for every stage. Stages, each timed after ``--warmup`` steps:

* ``input``: iterating the tf.data pipeline that ``train`` fits on (``make_input``: read, shuffle,
  batch, parse, prepare), nothing else, first pass over the files (no cache yet: the worst case); with
  ``data.in_memory``, gathering batches from the examples parsed into memory (that pass is timed apart);
* ``towers``: forward + backward of the towers alone (query tower on the batch, candidate tower on the
  batch's positives and on the sampled negatives), loss = a sum of outputs; then the same with the
  optimizer's update (Adam updates its moments densely over whole embedding tables);
* ``+ in-batch softmax``: the towers plus Q C^T / tau over the B + negatives columns and softmax
  cross-entropy with labels I (no logQ, no accidental hits);
* ``+ task (full compute_loss)``: the model's own ``compute_loss`` (logQ, accidental hits, every
  configured transform and auxiliary loss) with its gradient step;
* ``keras train_step``: the step ``fit`` runs (``make_train_function``: compute_loss, gradient step,
  loss and metric trackers), on in-memory batches;
* ``fit (end to end)``: ``model.fit`` on the real pipeline (a fresh one: shuffle buffer filled
  again), timed from the end of step ``--warmup`` (the first steps trace) over the same number of steps.

The in-memory stages run in interleaved rounds (median kept) and read from batches already parsed, so their difference to ``fit`` is what the
input pipeline costs when it shares the 2 cores with the step. A stage's share is its time minus the
previous stage's (cumulative stages); examples/s = steps x batch / seconds.

    python -m benchmarks.profile_training --workdir /tmp/gw/bench     # Gowalla valid: default and package_basic
    python -m benchmarks.profile_training --workdir /tmp/gw/bench --configs default --set negatives.uniform=0
"""
import datetime
import os
import sys
import time

import tfrec_towers  # noqa: F401  (Keras 2 before TensorFlow loads)

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfrec_towers.config import Config, packaged
from tfrec_towers.data import reader
from tfrec_towers.data.inputs import compute_stats, make_input
from tfrec_towers.train import build_trainable

from benchmarks.gowalla import gated_tower, package_config
from benchmarks.harness import (REPO, add_common_flags, argument_parser, comma_list, fresh_start, log, provenance,
                                write_results)

__all__ = ["VARIANTS", "profile", "markdown", "load_config", "main"]

#: The packaged Gowalla model before LazyAdam (2026-11-30), with Adam and with LazyAdam: the optimizer's share.
OLD = os.path.join(REPO, "benchmarks", "configs", "gowalla_2026-11-30")


def timed(step, batches, warmup: int) -> float:
    """Seconds for ``step`` over ``batches`` after ``warmup`` untimed calls (the result read back each time)."""
    for b in batches[:warmup]:
        _ = step(b)
    t = time.perf_counter()
    out = None
    for b in batches:
        out = step(b)
    if out is not None:
        _ = [x.numpy() for x in tf.nest.flatten(out)]
    return time.perf_counter() - t


def tower_outputs(model, features):
    """(query [B, d], candidates [B + n, d], candidate ids): the towers' part of ``compute_loss``."""
    query = model.query_tower(features, training=True)
    candidates = model.candidate_tower(features, training=True)
    ids = features[model.item_id]
    if model.negatives is not None:
        rows = model.negatives.sample(features)
        if rows is not None:
            extra = model.candidate_tower(model.negatives.catalog.gather(rows), training=True)
            candidates = tf.concat([candidates, extra], axis=0)
            ids = tf.concat([ids, model.negatives.catalog.ids_at(rows)], axis=0)
    return query, candidates, ids


def gradient_step(model, loss_fn, apply: bool = True):
    """A compiled step: loss_fn(features) -> scalar; gradients of the model's variables; the optimizer's
    update unless ``apply`` is False (then the gradients are reduced to one number, so none is pruned)."""
    opt = model.optimizer

    @tf.function(reduce_retracing=True)
    def step(features):
        with tf.GradientTape() as tape:
            loss = loss_fn(features)
        variables = model.trainable_variables
        grads = [(g, v) for g, v in zip(tape.gradient(loss, variables), variables) if g is not None]
        if not apply:
            return tf.add_n([tf.reduce_sum(g.values if isinstance(g, tf.IndexedSlices) else g) for g, _ in grads])
        opt.apply_gradients(grads)
        return loss
    return step


class StepTimer(keras.callbacks.Callback):
    """Wall time of ``fit`` from the first batch end at or past ``skip`` steps (the first steps trace the
    step function); ``steps`` after it. With ``steps_per_execution`` N batch ends come every N steps."""

    def __init__(self, skip: int):
        super().__init__()
        self.skip, self.start, self.end, self.steps, self.first = skip, None, None, 0, None

    def on_train_batch_end(self, batch, logs=None):
        if self.start is None and batch >= self.skip - 1:
            self.start, self.first = time.perf_counter(), batch
        elif self.start is not None:
            self.end, self.steps = time.perf_counter(), batch - self.first


def profile(config: Config, files, items: str, steps: int, warmup: int, rounds: int = 3) -> dict:
    batch = config.train.batch_size
    t0 = time.perf_counter()
    stats, _ = compute_stats(config, files, progress=lambda m: None)
    stats_s = time.perf_counter() - t0
    model = build_trainable(config, stats, files, items, progress=log)
    tau = config.task.temperature or 1.0

    # input pipeline alone, first pass over the files
    t = time.perf_counter()
    ds = make_input(config, files, training=True, stats=stats)
    build_s = time.perf_counter() - t  # data.in_memory: the pass that parses the logs into memory
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    t = time.perf_counter()
    batches = [next(it) for _ in range(steps)]
    input_s = time.perf_counter() - t
    batches = [b for b in batches if int(tf.shape(b[config.features.item_id])[0]) == batch] or batches

    def towers_loss(f):
        q, c, _ = tower_outputs(model, f)
        return tf.reduce_sum(q) + tf.reduce_sum(c)

    def softmax_loss(f):
        q, c, _ = tower_outputs(model, f)
        logits = tf.linalg.matmul(q, c, transpose_b=True) / tau
        labels = tf.eye(tf.shape(logits)[0], tf.shape(logits)[1])
        return tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels, logits))

    steps_by_stage = {
        "towers_grad": gradient_step(model, towers_loss, apply=False),
        "towers": gradient_step(model, towers_loss),
        "softmax": gradient_step(model, softmax_loss),
        "task": gradient_step(model, lambda f: model.compute_loss(f, training=True)),
        "train_step": tf.function(model.train_step, reduce_retracing=True),  # what make_train_function compiles
    }
    runs = {k: [] for k in steps_by_stage}
    for _ in range(rounds):  # interleaved rounds, median: the machine is shared and its load drifts
        for key, step in steps_by_stage.items():
            runs[key].append(timed(step, batches, warmup))
    rows = {"input": input_s, **{k: float(np.median(v)) for k, v in runs.items()}}
    timer = StepTimer(warmup)
    model.fit(make_input(config, files, training=True, stats=stats), epochs=1, steps_per_epoch=len(batches) + warmup,
              verbose=0, callbacks=[timer])
    rows["fit"] = timer.end - timer.start
    fit_steps = timer.steps
    examples = len(batches) * batch
    return {"seconds": rows, "steps": len(batches), "batch_size": batch, "examples": examples,
            "fit_steps": fit_steps, "input_build_seconds": build_s, "rounds": rounds, "stage_runs": runs, "stats_pass_seconds": stats_s,
            "num_examples": stats.num_examples}


LABELS = [("input", "input pipeline alone (read, shuffle, batch, parse, prepare; first pass)", None),
          ("towers_grad", "towers: forward + backward (positives and sampled negatives)", None),
          ("towers", "+ optimizer update of the towers' variables", "towers_grad"),
          ("softmax", "+ in-batch softmax (Q C^T / tau over B + negatives columns, cross-entropy)", "towers"),
          ("task", "+ rest of the task (logQ, accidental hits, configured transforms)", "softmax"),
          ("train_step", "+ Keras train_step (loss tracker, metrics; batch_recall_k off)", "task"),
          ("fit", "model.fit on the real pipeline (end to end)", None)]


def markdown(doc: dict) -> str:
    out = [doc["provenance"], "",
           f"Batch {doc['batch_size']}, {doc['steps']} timed steps ({doc['examples']} examples) per configuration, "
           f"the same batches for its in-memory stages (median of {doc['rounds']} interleaved rounds). The stages "
           "are cumulative: a stage's share is its time minus the previous one's, over train_step's. Input alone "
           "runs on the same 2 cores as the step inside fit (prefetch overlaps them).", ""]
    for prof in doc["profiles"]:
        out += [f"**{prof['name']}**" + (f" ({prof['what']})" if prof.get("what") else ""), "",
                "| stage | ms / step | examples/s | share of train_step |", "|---|---|---|---|"]
        s, n = prof["seconds"], prof["steps"]
        total = s["train_step"]
        for key, label, prev in LABELS:
            steps = prof["fit_steps"] if key == "fit" else n
            share = "" if key in ("input", "fit") else f"{100 * (s[key] - (s[prev] if prev else 0)) / total:.0f}%"
            out.append(f"| {label} | {1000 * s[key] / steps:.1f} | {steps * prof['batch_size'] / s[key]:,.0f} | {share} |")
        if prof["config"]["data"].get("in_memory"):
            out.append(f"| (data.in_memory: parsing the logs into memory before fit, once) | {prof['input_build_seconds']:.1f} s "
                       f"| {prof['num_examples'] / prof['input_build_seconds']:,.0f} | |")
        out.append("")
    return "\n".join(out)


WHAT = {"default": "cf.yaml: user-ID and item-ID tables, 256-d, BSL over 800 uniform + in-batch negatives, LazyAdam",
        "best": "gowalla.py's best (cf.yaml since 2026-12-06)",
        "package_basic": "the TFRS basic model's structure: user ID, item ID, in-batch softmax, Adagrad; data.in_memory",
        "default_gated": "cf.yaml with the gated user tower it had until 2026-12-07 (gowalla.gated_tower: 0.8 user "
                         "ID + 0.2 W mean(50 history items through the item table))",
        "default_history_constant": "default_gated with model.user_gate.history_gradient false: the pooled history "
                                    "a constant, so the item table's update covers the batch's candidates only",
        "default_history_sampled": "default_gated with item_history's gradient_share 0.2: the item table learns "
                                   "through a random fifth of the history items (weight 5)"}
#: Named variants of ``default``: its overrides.
VARIANTS = {"default_gated": gated_tower(),
            "default_history_constant": gated_tower() + ["model.user_gate.history_gradient=false"],
            "default_history_sampled": gated_tower() + ["features.query.item_history.gradient_share=0.2"]}


def load_config(name: str, overrides) -> Config:
    """gowalla.py's ``default`` / ``best`` / ``package_basic``, else a packaged config name or a YAML path."""
    if name in VARIANTS:
        return package_config("default", 0, list(overrides) + VARIANTS[name])
    if name in WHAT:
        return package_config(name, 0, [] if name == "package_basic" else overrides)
    path = name if os.path.exists(name) else packaged(name)
    return Config.load(path).with_overrides(overrides)


def main(argv=None):
    p = argument_parser(__doc__)
    add_common_flags(p, "profile_training")
    p.add_argument("--workdir", default="/tmp/gw/bench", help="gowalla.py's workdir (converted data in data/<split>)")
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--configs", default=f"{OLD}_adam.yaml,{OLD}_lazy_adam.yaml,default,default_gated,"
                                        "default_history_constant,default_history_sampled,package_basic",
                   help="comma-separated: gowalla.py's default / best / package_basic, a VARIANTS name, packaged config "
                        "names or YAML paths")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override for every configuration but package_basic")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of the in-memory stages (median)")
    args = p.parse_args(argv)
    started = datetime.datetime.now().astimezone()
    data = os.path.join(args.workdir, "data", args.split)
    files = reader.list_files(os.path.join(data, "train", "*"))
    items = os.path.join(data, "items", "*")
    profiles = []
    for name in comma_list(args.configs):
        config = load_config(name, args.set)
        fresh_start(config.train.seed)
        log(f"--- {name} ---")
        label = os.path.splitext(os.path.basename(name))[0] if os.path.exists(name) else name
        profiles.append({"name": label, "what": WHAT.get(name), "config": config.to_dict(),
                         **profile(config, files, items, args.steps, args.warmup, args.rounds)})
    first = profiles[0]
    doc = {"provenance": provenance(f"Training-step profile, Gowalla ({args.split} split)", started)
           + f", TensorFlow {tf.__version__}", "date": started.isoformat(timespec="seconds"), "set": args.set,
           "batch_size": first["batch_size"], "steps": first["steps"], "examples": first["examples"],
           "rounds": args.rounds, "profiles": profiles}
    log(write_results(doc, markdown(doc), args.output_json, args.output_md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
