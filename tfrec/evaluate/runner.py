"""`tfrec evaluate`: the model and the baselines on the same held-out cases.

The protocol is the run's own (its config's data, split and seed; see
`protocol`): every method ranks the whole catalogue for every case, the
query's own items excluded, and is scored on all, warm and cold targets.
The report folder gets `report.json`, `report.html` (self-contained, plots
embedded) and the plots as PNG files under `plots/`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

import tfrec.training as training
from tfrec.data.sequences import histories_from_lists
from tfrec.config import EvaluateSettings
from tfrec.errors import InputError
from tfrec.evaluate import baselines as baselines_lib
from tfrec.evaluate.analyses import (categories_of, cold_start_figures, conversion_ranks,
                                     index_recall)
from tfrec.evaluate.bar import DEFAULT_TARGETS, check_bar
from tfrec.evaluate.exported import ExportedModel, run_of_export
from tfrec.evaluate.methods import BASELINES, LABELS, MAX_K, MODEL
from tfrec.evaluate.metrics import hit_rate, target_ranks
from tfrec.evaluate.protocol import rank_targets, score_cases
from tfrec.evaluate.report import write_report
from tfrec.run import check_run_data, load_run, prepare_training_data, with_data_dir

logger = logging.getLogger(__name__)

# Item-item baselines: an n x n matrix, so only up to a catalogue size.
ITEM_ITEM = {"ease": baselines_lib.ease, "itemknn": baselines_lib.itemknn}


@dataclasses.dataclass
class MethodResult:
    name: str
    ranks: np.ndarray
    seconds: float
    note: str = ""
    tuning: dict | None = None


def parse_baselines(text: str | None) -> tuple[str, ...]:
    """'all' (default), 'none' or a comma-separated subset of BASELINES."""
    if text is None or text == "all":
        return BASELINES
    if text == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise InputError(f"unknown baseline(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(BASELINES)}, 'all' or 'none'", key="evaluate.baselines")
    return names


def scores_of(ranks: np.ndarray, cases, k: int) -> dict:
    """`protocol.score_cases` per group plus HR@1..MAX_K curves; a group
    without cases is null (strict JSON), not NaN."""
    out = score_cases(ranks, cases, k)
    out.pop("unknown_targets")
    for group, mask in (("all", np.ones(len(ranks), bool)), ("warm", ~cases.cold),
                        ("cold", cases.cold)):
        if not mask.any():
            out[group].update({f"hr@{k}": None, f"ndcg@{k}": None, "hr_curve": []})
        else:
            out[group]["hr_curve"] = [hit_rate(ranks[mask], kk) for kk in range(1, MAX_K + 1)]
    return out


class Step:
    """Numbered progress lines ('[3/9] popularity'); a call returns the time."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0

    def __call__(self, text: str):
        self.done += 1
        logger.info("[%d/%d] %s", self.done, self.total, text)
        return time.perf_counter()


def _variant_run(run_dir: Path, config, name: str, overrides: dict, progress):
    """Trains (or reuses) the run's config with one tower off, under run/baselines/."""
    folder = run_dir / "baselines" / name
    model_config = dataclasses.replace(config.model, **overrides)
    train_config = config.train
    if train_config.strategy == "multi_worker":
        # A variant trains here, in this one process, not on the run's cluster.
        train_config = dataclasses.replace(train_config, strategy="default")
    variant = dataclasses.replace(config, model=model_config, train=train_config)
    if (folder / "checkpoints").exists():
        try:
            saved = json.loads((folder / "config.json").read_text())
            if saved == json.loads(json.dumps(variant.to_dict())):
                progress(f"{LABELS[name]}: reusing {folder}")
                return load_run(folder)[2]
        except (OSError, ValueError, InputError):
            pass
        shutil.rmtree(folder)
    progress(f"{LABELS[name]}: training ({config.train.epochs} epochs) in {folder}")
    return training.train(variant, folder, verbose=0).model


def evaluate_run(run_dir: str | Path | None, out_dir: str | Path | None = None,
                 baselines: tuple[str, ...] = BASELINES, k: int | None = None,
                 targets: dict | None = None,
                 gensim_epochs: int = EvaluateSettings.gensim_epochs,
                 gensim_dim: int = EvaluateSettings.gensim_dim,
                 saved_model: str | Path | None = None,
                 max_item_item_catalogue: int = baselines_lib.MAX_ITEM_ITEM_CATALOGUE,
                 data_dir: str | Path | None = None) -> dict:
    """Evaluates a run and the baselines; writes report.json, report.html and plots.

    Args:
      run_dir: a `tfrec train` run folder (with `saved_model`, default: the
        run the export names in its metadata).
      saved_model: evaluate this exported version (its cached item
        embeddings, query signature and index) instead of the run's
        checkpoint; the run still defines the data, split and cases.
      out_dir: report folder (default RUN_DIR/evaluation).
      baselines: which of BASELINES to run beside the model.
      k: the K of HR@K / NDCG@K in the table (default: the run's eval_k).
      targets: HR@k per group the model must reach (default: the bar for the
        bundled protocol when the run uses it, else none).
      gensim_epochs: passes of the gensim item2vec baseline.
      gensim_dim: its vector size (the default is the best measured: on the
        bundled data it scored HR@10 0.160 at 64, 0.119 at 128 and 0.085 at 256).
      max_item_item_catalogue: EASE and ItemKNN run up to this many catalogue
        items (an n x n matrix each); above it they are skipped, with the
        reason in the log, the table and the report.
      data_dir: the data folder to read the run's data set from, when the
        run's config names no `data.data_dir`.

    Returns:
      The report (as written to report.json).
    """
    started = time.perf_counter()
    if saved_model is not None and run_dir is None:
        run_dir = run_of_export(Path(saved_model))
    if run_dir is None:
        raise InputError("give a run folder with evaluate.run_dir or an exported version "
                         "with evaluate.saved_model", key="evaluate.run_dir")
    run_dir = Path(run_dir)
    config, run_vocab, model, checkpoint = load_run(run_dir)
    config = with_data_dir(config, data_dir)
    k = k or config.train.eval_k
    if k < 1 or k > MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k}", key="evaluate.k")
    if targets is None and _default_protocol(config):
        targets = DEFAULT_TARGETS
    out_dir = Path(out_dir) if out_dir else run_dir / "evaluation"
    step = Step(5 + len(baselines))

    step("preparing the held-out cases (the run's data and split)")
    data = prepare_training_data(config)
    check_run_data(data.vocab, run_vocab, run_dir)
    cases = data.cases
    if len(cases) == 0:
        raise InputError("no evaluation cases: no held-out session has two distinct items "
                         "(set train.split_date or train.split_fraction)")
    vocab = data.vocab
    valid = np.ones(vocab.size, dtype=bool)
    valid[0] = False
    results: dict[str, MethodResult] = {}
    skipped: dict[str, str] = {}

    exported = None
    if saved_model is not None:
        exported = ExportedModel(Path(saved_model), vocab)
        model, checkpoint = exported, str(Path(saved_model).resolve())
    t0 = step(f"{LABELS[MODEL]}: ranking {len(cases):,} cases over {vocab.size - 1:,} items"
              + (f" (export {saved_model})" if exported else ""))
    ranks, item_emb, query_emb = rank_targets(model, cases.queries, cases.targets,
                                              config.model.history_length)
    results[MODEL] = MethodResult(MODEL, ranks, time.perf_counter() - t0,
                                  f"export {saved_model}" if exported
                                  else f"checkpoint {Path(checkpoint).name}")

    for name in baselines:
        t0 = time.perf_counter()
        if name == "popularity":
            step(LABELS[name])
            emb = baselines_lib.popularity(vocab, cases.queries)
        elif name == "tfidf_text":
            step(LABELS[name])
            emb = baselines_lib.tfidf(vocab, cases.queries)
        elif name == "item2vec_gensim":
            step(f"{LABELS[name]}: Word2Vec skip-gram, {gensim_epochs} epochs, "
                 f"dim {gensim_dim}")
            emb = baselines_lib.item2vec_gensim(data.sessions, vocab, cases.queries,
                                                dim=gensim_dim,
                                                epochs=gensim_epochs, seed=config.train.seed)
        elif name in ITEM_ITEM:
            reason = baselines_lib.item_item_skip_reason(vocab.size - 1,
                                                         max_item_item_catalogue)
            if reason:
                step(f"{LABELS[name]}: {reason}")
                skipped[name] = reason
                continue
            step(f"{LABELS[name]}: choosing its setting on a validation slice of the training "
                 "sessions, then fitting on all of them")
            emb = ITEM_ITEM[name](data.sessions, vocab, cases.queries, k=k,
                                  seed=config.train.seed, max_items=max_item_item_catalogue)
        else:
            overrides = ({"use_text": False, "id_dropout": 0.0} if name == "tfrec_text_off"
                         else {"use_ids": False, "id_dropout": 0.0})
            variant = _variant_run(run_dir, config, name, overrides, step)
            r, _, _ = rank_targets(variant, cases.queries, cases.targets,
                                   config.model.history_length)
            results[name] = MethodResult(name, r, time.perf_counter() - t0)
            continue
        r = target_ranks(emb.queries, emb.items, cases.targets, cases.queries, valid)
        results[name] = MethodResult(name, r, time.perf_counter() - t0, tuning=emb.tuning)

    if exported is not None:
        step("index recall: the export's serving_default against exact search")
        recall = exported.index_recall(
            histories_from_lists(cases.queries, config.model.history_length), query_emb)
    else:
        step("index recall: ScaNN (export settings) against exact search")
        recall = index_recall(item_emb, query_emb)
    conversion = conversion_ranks(data.test_slice, vocab, model, config.model.history_length,
                                  config.data.sessions, item_emb)
    step("cold start: warm targets as if new, and the cold items' share of the top slots")
    cold_start = cold_start_figures(model, vocab, cases, ranks, item_emb, query_emb,
                                    valid, k)

    methods = {name: {"label": LABELS[name], "seconds": round(res.seconds, 1),
                      **({"note": res.note} if res.note else {}),
                      **({"tuning": res.tuning} if res.tuning else {}),
                      **scores_of(res.ranks, cases, k)}
               for name, res in results.items()}
    report = {
        "run": str(run_dir.resolve()), "checkpoint": checkpoint, "k": k,
        "protocol": {"data": config.data.layout,
                     "events": config.data.events or "data folder",
                     "split_by": config.train.split_by,
                     "split_date": config.train.split_date,
                     "split_fraction": None if config.train.split_date else
                     config.train.split_fraction,
                     "holdout_users": config.train.holdout_users
                     if config.train.split_by == "user" else None,
                     "cold_items": config.train.cold_items,
                     "retrieval_context": data.retrieval_context,
                     "eval_seed": config.train.eval_seed, "cases": len(cases),
                     "warm_cases": int((~cases.cold).sum()), "cold_cases": int(cases.cold.sum()),
                     "unknown_targets": cases.unknown_targets,
                     "candidates": int(vocab.size - 1), "train_events": data.train_events,
                     "test_events": data.test_events},
        "methods": methods,
        "skipped": {name: {"label": LABELS[name], "reason": reason}
                    for name, reason in skipped.items()},
        "index_recall": recall,
        "conversion": conversion,
        "cold_start": cold_start,
        "checks": check_bar(methods, k, targets),
        "seconds": round(time.perf_counter() - started, 1),
    }
    step(f"writing the report to {out_dir}")
    codes, names = categories_of(vocab)
    write_report(report, out_dir, item_emb[1:], codes[1:], names, cold=vocab.counts[1:] == 0)
    return report


def _default_protocol(config) -> bool:
    return (config.data.layout == "online_retail" and config.data.events is None
            and config.train.split_date == "2011-10-01" and config.train.eval_seed == 42)
