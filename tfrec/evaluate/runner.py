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
import time
from pathlib import Path

import numpy as np

from tfrec.errors import InputError
from tfrec.evaluate import baselines as baselines_lib
from tfrec.evaluate.metrics import hit_rate, ndcg, target_ranks
from tfrec.evaluate.protocol import rank_targets, score_cases

logger = logging.getLogger(__name__)

MODEL = "tfrec"
BASELINES = ("popularity", "item2vec_gensim", "tfidf_text", "ease", "itemknn",
             "tfrec_text_off", "tfrec_id_off")
LABELS = {
    "popularity": "popularity",
    "item2vec_gensim": "item2vec (gensim)",
    "tfidf_text": "text only (TF-IDF)",
    "ease": "EASE",
    "itemknn": "ItemKNN (cosine)",
    "tfrec_text_off": "tfrec, text tower off",
    "tfrec_id_off": "tfrec, id tower off",
    MODEL: "tfrec (full model)",
}
TEXT_ONLY = ("tfidf_text", "tfrec_id_off")
# Item-item baselines: an n x n matrix, so only up to a catalogue size.
ITEM_ITEM = {"ease": baselines_lib.ease, "itemknn": baselines_lib.itemknn}
# The bar on the default protocol (bundled Online Retail, split 2011-10-01).
DEFAULT_TARGETS = {"all": 0.24, "warm": 0.22, "cold": 0.18}
MAX_K = 50


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
                         f"{', '.join(BASELINES)}, 'all' or 'none'", key="baselines")
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
    from tfrec.run import load_run
    from tfrec.training import train

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
        import shutil

        shutil.rmtree(folder)
    progress(f"{LABELS[name]}: training ({config.train.epochs} epochs) in {folder}")
    return train(variant, folder, verbose=0).model


class ExportedModel:
    """An exported version scored like a trained model: its cached item
    embeddings, its `embed_query` signature, and its own index for recall."""

    def __init__(self, path: Path, vocab):
        from tfrec.exporter.saved_model import load_saved_model

        self.path = Path(path)
        self.vocab = vocab
        self.module = load_saved_model(self.path)
        folder = self.path / "assets.extra" / "embeddings"
        try:
            vectors = np.load(folder / "items.npy")
            ids = (folder / "item_ids.txt").read_text().splitlines()
        except OSError as err:
            raise InputError(f"the export has no cached item embeddings ({err.strerror})",
                             path=str(folder)) from None
        index = vocab.lookup(np.asarray(ids, dtype=object))
        if (index == 0).any() or len(ids) != vocab.size - 1:
            raise InputError("the export's items differ from the run's vocabulary (exported "
                             "from another run?)", path=str(folder / "item_ids.txt"))
        self.items = np.zeros((vocab.size, vectors.shape[1]), np.float32)
        self.items[index] = vectors

    def item_embeddings(self) -> np.ndarray:
        return self.items

    def text_embeddings(self, texts: np.ndarray, batch_size: int = 4096) -> np.ndarray | None:
        """The export's `embed_items` for unknown ids: each text as a brand-new item."""
        import tensorflow as tf

        function = self.module.signatures["embed_items"]
        texts = np.asarray(texts).astype(str)
        out = [function(item_ids=tf.constant([""] * len(texts[i:i + batch_size])),
                        texts=tf.constant(texts[i:i + batch_size]))["embeddings"].numpy()
               for i in range(0, len(texts), batch_size)]
        vectors = np.concatenate(out) if out else np.zeros((0, self.items.shape[1]), np.float32)
        return vectors if np.abs(vectors).sum() > 0 else None  # no text tower: all zeros

    def _ids(self, history: np.ndarray):
        import tensorflow as tf

        names = np.where(history > 0, self.vocab.ids[history], "").astype(object)
        return tf.constant(names.astype(str))

    def query_embeddings(self, history: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        function = self.module.signatures["embed_query"]
        return np.concatenate([function(item_ids=self._ids(history[i:i + batch_size]))[
            "embeddings"].numpy() for i in range(0, len(history), batch_size)])

    def index_recall(self, history: np.ndarray, queries: np.ndarray, k: int = 10) -> dict:
        """The exported serving_default top-k against exact top-k (query items excluded)."""
        import tensorflow as tf

        function = self.module.signatures["serving_default"]
        found = np.concatenate([function(item_ids=self._ids(history[i:i + 1024]),
                                         k=tf.constant(k))["item_ids"].numpy().astype(str)
                                for i in range(0, len(history), 1024)])
        valid = np.ones(len(self.items), dtype=bool)
        valid[0] = False
        top = top_k_items(queries, self.items, list(history), valid, k)  # query items excluded
        exact = self.vocab.ids[top].astype(str)
        hits = [len(set(a) & set(b)) for a, b in zip(found, exact)]
        return {"index": "export", "path": str(self.path), "queries": int(len(history)),
                "recall": {str(k): float(np.mean(hits) / k)}}


def text_embeddings(model, texts: np.ndarray, batch_size: int = 65_536) -> np.ndarray | None:
    """Each text embedded by the model's text path alone (None without a text tower)."""
    import tensorflow as tf

    if hasattr(model, "text_embeddings"):
        return model.text_embeddings(texts)
    encoder = model.item_encoder
    if not encoder.config.use_text:
        return None
    texts = np.asarray(texts).astype(str)
    return np.concatenate([encoder.encode_text(tf.constant(texts[i:i + batch_size])).numpy()
                           for i in range(0, len(texts), batch_size)])


def cold_start_figures(model, vocab, cases, ranks: np.ndarray, item_emb: np.ndarray,
                       query_emb: np.ndarray, valid: np.ndarray, k: int) -> dict:
    """How the model treats items it knows only by their text.

    - simulated cold start: HR@k / NDCG@k of the warm targets scored with
      their text-only embedding in place of their full one (every warm
      target as if it were a brand-new item), beside the same targets scored
      normally (`ranks`: the model's ranks of every case);
    - top-k slot shares: the share of the model's top-k slots that go to cold
      items, beside the cold items' share of the catalogue and of the targets
      (far above the targets' share means cold items are ranked by a bias,
      crowding out warm ones).
    """
    text = text_embeddings(model, vocab.text)
    out = {"available": text is not None}
    if text is None:
        return {**out, "reason": "the model has no text tower"}
    warm = ~cases.cold
    targets = cases.targets[warm]
    queries = [q for q, w in zip(cases.queries, warm) if w]
    as_new = target_ranks(query_emb[warm], item_emb, targets, queries, valid,
                          target_embeddings=text[targets])
    as_is = ranks[warm]
    cold_item = np.zeros(len(item_emb), dtype=bool)
    cold_item[1:] = vocab.counts[1:] == 0
    slots = top_k_items(query_emb, item_emb, cases.queries, valid, k)
    return {**out, "warm_cases": int(warm.sum()),
            "warm": {f"hr@{k}": hit_rate(as_is, k), f"ndcg@{k}": ndcg(as_is, k)},
            "warm_as_new": {f"hr@{k}": hit_rate(as_new, k), f"ndcg@{k}": ndcg(as_new, k)},
            "cold_share": {"top_k_slots": float(cold_item[slots].mean()),
                           "targets": float(cases.cold.mean()),
                           "catalogue": float(cold_item[valid].mean())}}


def top_k_items(query_emb: np.ndarray, item_emb: np.ndarray, exclude: list, valid: np.ndarray,
                k: int, chunk: int = 1024) -> np.ndarray:
    """[n, k] the k best valid items of each query, its own items excluded (unordered)."""
    out = []
    for start in range(0, len(query_emb), chunk):
        scores = query_emb[start:start + chunk] @ item_emb.T
        scores[:, ~valid] = -np.inf
        for row, own in enumerate(exclude[start:start + chunk]):
            scores[row, own] = -np.inf
        out.append(np.argpartition(-scores, k - 1, axis=1)[:, :k])
    return np.concatenate(out)


def index_recall(items: np.ndarray, queries: np.ndarray, ks=(1, 5, 10, 20, 50)) -> dict:
    """ScaNN (the export's settings) against exact search on the case queries."""
    from tfrec.index.ann import IndexConfig, build_index, recall_at_ks, scann_parameters

    embeddings, ids = items[1:], np.arange(1, len(items)).astype(str)
    config = IndexConfig(kind="scann", max_k=max(ks))
    started = time.perf_counter()
    index = build_index(embeddings, ids, config)
    build = time.perf_counter() - started
    recall = recall_at_ks(index, queries, embeddings, ids, ks)
    return {"index": "scann", "parameters": scann_parameters(len(embeddings), config),
            "queries": int(len(queries)), "build_seconds": round(build, 3),
            "recall": {str(k): v for k, v in recall.items()}}


def conversion_ranks(test_events, vocab, model, history_length: int, session_config,
                     items: np.ndarray) -> dict:
    """Airbnb's measure: rank of each test session's converted item given its other items."""
    from tfrec.data.sessions import sessionize

    if len(test_events) == 0:
        return {"available": False, "reason": "no test events"}
    known = test_events[vocab.lookup(test_events["item"].to_numpy(dtype=object)) > 0]
    if len(known) == 0:
        return {"available": False, "reason": "no test event is on a catalogue item"}
    config = dataclasses.replace(session_config, max_length=1 << 30)
    sessions = sessionize(known, vocab, config)
    queries, targets = [], []
    for s, (a, b) in enumerate(zip(sessions.row_splits[:-1], sessions.row_splits[1:])):
        target = int(sessions.converted[s])
        if target <= 0:
            continue
        query = list(dict.fromkeys(i for i in sessions.items[a:b].tolist() if i != target))
        if query:
            queries.append(query)
            targets.append(target)
    if not targets:
        return {"available": False,
                "reason": "the test sessions have no conversion event "
                          f"(types {', '.join(session_config.conversion_types)}) after other "
                          "items"}
    ranks, _, _ = rank_targets(model, queries, targets, history_length, items)
    return {"available": True, "sessions": len(targets),
            "mean_rank": float(ranks.mean()), "median_rank": float(np.median(ranks)),
            "share_in_top_k": [hit_rate(ranks, k) for k in range(1, MAX_K + 1)]}


def categories_of(vocab, top: int = 8) -> tuple[np.ndarray, list[str]]:
    """Item -> category index for the map: the last word of the item's text.

    Product titles end in their head noun (".. T-LIGHT HOLDER", ".. LUNCH
    BAG"), which is the text's category; the `top` most common ones get a
    colour, the rest are "other". Items without text fall back to their
    market.
    """
    heads = [(baselines_lib.tokenize(t) or [""])[-1] for t in vocab.text]
    markets = np.asarray(vocab.market_names + [""], dtype=object)[vocab.market]
    labels = np.asarray([h if h else str(m) for h, m in zip(heads, markets)], dtype=object)
    labels[0] = ""
    values, counts = np.unique(labels[labels != ""], return_counts=True)
    names = [str(v) for v in values[np.argsort(-counts, kind="stable")][:top]]
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index.get(str(v), -1) for v in labels]), names


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    centred = embeddings - embeddings.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def metric_value(method: dict, group: str, metric: str) -> float | None:
    """A method's figure ("hr@10", "ndcg@10"; another HR@K from its hr_curve), or None."""
    entry = method[group]
    if metric in entry:
        return entry[metric]
    curve = entry.get("hr_curve") or []
    at = int(metric.split("@")[1]) if metric.startswith("hr@") else 0
    return curve[at - 1] if 0 < at <= len(curve) else None


def check_bar(methods: dict, k: int, targets: dict | None) -> list[dict]:
    """The claims the full model must meet, each with the figures behind it.

    A claim against a method that was not run (or a group without cases) is
    left out.
    """
    hr, nd = f"hr@{k}", f"ndcg@{k}"
    full = methods[MODEL]
    others = {n: m for n, m in methods.items() if n != MODEL}
    checks = []

    def compare(check, group, metric, names, strict=False):
        model = metric_value(full, group, metric)
        names = [n for n in names if n in others
                 and metric_value(others[n], group, metric) is not None]
        if model is None or not names:
            return
        best = max(names, key=lambda n: metric_value(others[n], group, metric))
        baseline = metric_value(others[best], group, metric)
        checks.append({"check": check, "metric": metric, "model": model, "best_baseline": best,
                       "baseline": baseline, "met": model > baseline if strict
                       else model >= baseline})

    compare("beats every baseline on all cases", "all", hr, list(others), strict=True)
    compare("matches or beats the best text-only method on cold targets", "cold", hr, TEXT_ONLY)
    if k != MAX_K:
        compare(f"matches or beats the best text-only method on cold targets (HR@{MAX_K})",
                "cold", f"hr@{MAX_K}", TEXT_ONLY)
    compare("matches or beats EASE on warm targets", "warm", hr, ["ease"])
    compare(f"matches or beats EASE on warm targets (NDCG@{k})", "warm", nd, ["ease"])
    compare("matches or beats its own text-off variant on warm targets", "warm", hr,
            ["tfrec_text_off"])
    compare("matches or beats item2vec on warm targets", "warm", hr, ["item2vec_gensim"])
    for group, target in (targets or {}).items():
        if full[group][hr] is None:  # a group without cases has nothing to check
            continue
        checks.append({"check": f"HR@{k} on {group} targets >= {target}", "metric": hr,
                       "model": full[group][hr], "target": target,
                       "met": full[group][hr] >= target})
    return checks


def evaluate_run(run_dir: str | Path | None, out_dir: str | Path | None = None,
                 baselines: tuple[str, ...] = BASELINES, k: int | None = None,
                 targets: dict | None = None, gensim_epochs: int = 10,
                 gensim_dim: int = 64, saved_model: str | Path | None = None,
                 max_item_item_catalogue: int = baselines_lib.MAX_ITEM_ITEM_CATALOGUE) -> dict:
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
      gensim_dim: its vector size (64 by default: on the bundled data it
        scored HR@10 0.160 at 64, 0.119 at 128 and 0.085 at 256).
      max_item_item_catalogue: EASE and ItemKNN run up to this many catalogue
        items (an n x n matrix each); above it they are skipped, with the
        reason in the log, the table and the report.

    Returns:
      The report (as written to report.json).
    """
    from tfrec.run import check_run_data, load_run, prepare_training_data

    started = time.perf_counter()
    if saved_model is not None and run_dir is None:
        run_dir = _run_of_export(Path(saved_model))
    if run_dir is None:
        raise InputError("give a run folder (--run) or an exported version (--saved-model)")
    run_dir = Path(run_dir)
    config, run_vocab, model, checkpoint = load_run(run_dir)
    k = k or config.train.eval_k
    if k < 1 or k > MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k}", key="k")
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
        from tfrec.data.sequences import histories_from_lists

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
    from tfrec.evaluate import report as report_lib

    codes, names = categories_of(vocab)
    report_lib.write_report(report, out_dir, item_emb[1:], codes[1:], names,
                            cold=vocab.counts[1:] == 0)
    return report


def _run_of_export(path: Path) -> Path:
    from tfrec.exporter.saved_model import METADATA_FILE

    meta = path / "assets.extra" / METADATA_FILE
    try:
        run = json.loads(meta.read_text())["run"]
    except (OSError, ValueError, KeyError):
        raise InputError("cannot find the export's run in its metadata; pass --run too",
                         path=str(meta)) from None
    if not Path(run).is_dir():
        raise InputError(f"the export's run folder {run} is gone; pass --run", path=str(meta))
    return Path(run)


def _default_protocol(config) -> bool:
    return (config.data.layout == "online_retail" and config.data.events is None
            and config.train.split_date == "2011-10-01" and config.train.eval_seed == 42)


def tuning_line(label: str, tuning: dict, k: int) -> str:
    """'EASE: lambda 20 chosen on 1,324 validation cases ... (HR@10 by lambda: 1 0.3761, ...)'."""
    grid = ", ".join(f"{value} {hr:.4f}" for value, hr in tuning[f"hr@{k}"].items())
    return (f"{label}: {tuning['parameter']} {tuning['chosen']} chosen on "
            f"{tuning['validation_cases']:,} validation cases held out of the training "
            f"sessions (HR@{k} by {tuning['parameter']}: {grid})")


def format_report(report: dict) -> str:
    """The table `tfrec evaluate` prints."""
    k = report["k"]
    p = report["protocol"]
    lines = [f"{p['cases']:,} cases ({p['warm_cases']:,} warm, {p['cold_cases']:,} cold "
             f"targets), {p['candidates']:,} candidate items",
             f"{'method':<24}{'HR@' + str(k):>8}{'warm':>8}{'cold':>8}"
             f"{'NDCG@' + str(k):>9}{'warm':>8}{'cold':>8}{'time':>8}"]
    hr, nd = f"hr@{k}", f"ndcg@{k}"

    def cell(value, width):
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"

    for name, m in report["methods"].items():
        lines.append(f"{m['label']:<24}" + "".join(cell(m[g][hr], 8) for g in
                                                   ("all", "warm", "cold"))
                     + cell(m["all"][nd], 9) + "".join(cell(m[g][nd], 8) for g in
                                                       ("warm", "cold"))
                     + f"{m['seconds']:>7.0f}s")
    for skip in report.get("skipped", {}).values():
        lines.append(f"{skip['label']:<24}{skip['reason']}")
    for m in report["methods"].values():
        if "tuning" in m:
            lines.append(tuning_line(m["label"], m["tuning"], k))
    r = report["index_recall"]
    kind = "the export's index" if r["index"] == "export" else "ScaNN"
    lines.append(f"index recall@10 ({kind} vs exact, {r['queries']:,} case queries): "
                 f"{r['recall']['10']:.4f}")
    conv = report["conversion"]
    lines.append("converted-item rank: " + (
        f"{conv['sessions']:,} sessions, median rank {conv['median_rank']:.0f}"
        if conv["available"] else f"n/a ({conv['reason']})"))
    cs = report.get("cold_start", {})
    if cs.get("available"):
        share = cs["cold_share"]
        lines.append(f"cold start: warm targets scored by their text alone HR@{k} "
                     f"{cs['warm_as_new'][hr]:.4f} (by their full embedding "
                     f"{cs['warm'][hr]:.4f}); cold items hold {share['top_k_slots']:.1%} of the "
                     f"top-{k} slots ({share['targets']:.1%} of targets, "
                     f"{share['catalogue']:.1%} of the catalogue)")
    elif cs:
        lines.append(f"cold start: n/a ({cs['reason']})")
    for c in report["checks"]:
        against = (f"{c['baseline']:.4f} ({LABELS.get(c['best_baseline'], c['best_baseline'])})"
                   if "baseline" in c else f"{c['target']}")
        lines.append(f"  [{'met' if c['met'] else 'NOT met'}] {c['check']}: "
                     f"{c['model']:.4f} vs {against}")
    return "\n".join(lines)
