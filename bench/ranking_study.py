"""The two-stage ranking study: stage 1 on the reduced training period, the
ranker on the sessions stage 1 did not see, scored on the run's test cases.

    TFREC_DATA=/work/shared/data PYTHONPATH=. python bench/ranking_study.py \\
        --config tfrec/configs/online_retail.yaml --seed 42 \\
        --run-dir /work/runs/rank-or-s42 --out /work/runs/rank-or-s42.json

Stage 1 (the two-tower) trains in --run-dir (reused when finished) on the
training period less its last `ranking.ranker_share`; the item-item table
(`build_item_table` with the run config's `ranking` settings: the
estimator, M co-items per item, C neighbours, λ), the counts and the skip-gram
vectors that make the ranker's training features are fit on the same
reduced period, and refitted on the whole training period for the test
cases (as the export would). N and the ranker's settings are chosen on a
validation share of the ranker's cases. The test cases are those `tfrec
evaluate` ranks. Prints HR@10 all/warm/cold, NDCG@10 all/warm and cold
HR@50 for stage 1, EASE, TF-IDF, the ranker and the ranker without each
feature group, and the candidate recall of each source.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
import tensorflow as tf  # noqa: E402,I100
from tfrec.data.sequences import histories_from_lists
from tfrec.data.sessions import sessionize
from tfrec.data.split import Cases
from tfrec.evaluate import baselines
from tfrec.metrics import hit_rate, ndcg, target_ranks
from tfrec.config import RankingConfig
from tfrec.ranking import features as F
from tfrec.ranking.item_table import build_item_table
from tfrec.ranking.lexical import LexicalTable
from tfrec.ranking.protocol import (index_map, ranker_cases, ranker_split, split_validation,
                                    stage1_data, train_stage1)
from tfrec.ranking.ranker import fit_ranker, list_ranks, score_lists
from tfrec.run import load_run_config, prepare_training_data

logger = logging.getLogger("ranking_study")


def cached(path: Path, make):
    """`make()`, saved at `path` (.npy) and read back on the next run."""
    if path.exists():
        return np.load(path)
    value = np.asarray(make(), np.float32)
    np.save(path, value)
    return value


def normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def scores(ranks: np.ndarray, cold: np.ndarray, k: int = 10) -> dict:
    warm = ~cold
    return {"hr_all": hit_rate(ranks, k), "hr_warm": hit_rate(ranks[warm], k),
            "hr_cold": hit_rate(ranks[cold], k) if cold.any() else None,
            "ndcg_all": ndcg(ranks, k), "ndcg_warm": ndcg(ranks[warm], k),
            "hr50_cold": hit_rate(ranks[cold], 50) if cold.any() else None}


def row(name: str, s: dict) -> str:
    def f(v):
        return "   -  " if v is None else f"{v:.4f}"
    return (f"  {name:<34}{f(s['hr_all'])}  {f(s['hr_warm'])}  {f(s['hr_cold'])}  "
            f"{f(s['ndcg_all'])}  {f(s['ndcg_warm'])}  {f(s['hr50_cold'])}")


HEADER = ("  method                              HR@10   warm    cold    NDCG    NDCGw   "
          "cold@50")


# Features z-scored within each query's candidate list (beside the raw values).
LIST_Z = ("tt_score", "ii_score", "ii_max", "log_count")


def list_z(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`features` [n, N, F] with the LIST_Z columns' z-scores within each list appended
    (over its listed candidates; 0 at padding)."""
    cols = [F.FEATURES.index(name) for name in LIST_Z]
    x = features[:, :, cols].astype(np.float64)
    w = mask[:, :, None].astype(np.float64)
    count = np.maximum(w.sum(axis=1, keepdims=True), 1.0)
    mean = (x * w).sum(axis=1, keepdims=True) / count
    std = np.sqrt((((x - mean) ** 2) * w).sum(axis=1, keepdims=True) / count)
    z = np.where(std > 1e-9, (x - mean) / np.maximum(std, 1e-9), 0.0) * w
    return np.concatenate([features, z.astype(np.float32)], axis=2)


def list_rank(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`features` with the LIST_Z columns' places within each list appended, as a share
    of the list's length (0: the list's largest value; 0 at padding)."""
    cols = [F.FEATURES.index(name) for name in LIST_Z]
    x = np.where(mask[:, :, None], features[:, :, cols], -np.inf)
    order = np.argsort(-x, axis=1, kind="stable")
    place = np.empty_like(order)
    np.put_along_axis(place, order, np.arange(x.shape[1])[None, :, None], axis=1)
    length = np.maximum(mask.sum(axis=1), 1)[:, None, None]
    share = (place / length) * mask[:, :, None]
    return np.concatenate([features, share.astype(np.float32)], axis=2)


def ii_ratios(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`features` with the table score per query item and per log(1 + count) appended."""
    column = {name: j for j, name in enumerate(F.FEATURES)}
    score = features[:, :, column["ii_score"]]
    length = np.expm1(features[:, :, column["query_length"]])
    per_item = np.divide(score, length, out=np.zeros_like(score), where=length > 0)
    log_count = features[:, :, column["log_count"]]
    per_count = np.divide(score, log_count, out=np.zeros_like(score), where=log_count > 0)
    return np.concatenate([features, per_item[..., None], per_count[..., None]], axis=2)


# name: how the features change, the hidden units, the epochs, the share of fit cases
# shown as new (None: the settings')
VARIANTS = {"list_z": (list_z, None, None, None), "list_rank": (list_rank, None, None, None),
            "ii_ratios": (ii_ratios, None, None, None),
            "wide": (None, (128, 64), None, None), "epochs10": (None, None, 10, None),
            "epochs40": (None, None, 40, None), "new0": (None, None, None, 0.0),
            "new20": (None, None, None, 0.2), "new30": (None, None, None, 0.3)}


class Queries:
    """A set of cases with the stage-1 query embeddings."""

    def __init__(self, cases: Cases, cold: np.ndarray, embeddings: np.ndarray):
        self.cases, self.cold, self.embeddings = cases, cold, embeddings
        self.queries, self.targets = cases.queries, cases.targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--seed", type=int, default=42, help="train.seed and the ranker's seed")
    parser.add_argument("--run-dir", required=True, help="stage 1's run folder (reused)")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--widths", default="50,100,200,300", help="N grid (validation)")
    parser.add_argument("--table-size", type=int, default=RankingConfig.table_size,
                        help="M, co-items per item")
    parser.add_argument("--table-share", type=float, default=RankingConfig.table_share)
    parser.add_argument("--epochs", type=int, default=RankingConfig.epochs)
    parser.add_argument("--per-session", type=int, default=RankingConfig.cases_per_session)
    parser.add_argument("--new-share", type=float, default=RankingConfig.new_share)
    parser.add_argument("--lam", type=float, help="EASE's λ (default: chosen on its "
                        "validation slice of the training sessions, as `tfrec evaluate` does)")
    parser.add_argument("--i2v-epochs", type=int, default=5, help="skip-gram passes")
    parser.add_argument("--ablations", default="all",
                        help="feature groups to leave out one at a time (comma list, 'all' "
                             "or 'none')")
    parser.add_argument("--variants", default="",
                        help="ranker variants measured on validation and test at the chosen "
                             "N (comma list of: " + ", ".join(VARIANTS) + ")")
    parser.add_argument("--set", action="append", default=[], help="run config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("gensim").setLevel(logging.WARNING)
    started = time.perf_counter()
    widths = sorted(int(w) for w in args.widths.split(","))
    settings = RankingConfig(table_size=args.table_size, table_share=args.table_share,
                             epochs=args.epochs,
                             cases_per_session=args.per_session, new_share=args.new_share,
                             num_candidates=max(widths))
    config = load_run_config(args.config, [f"train.seed={args.seed}", *args.set])
    k = config.train.eval_k
    settings.check_k(k)

    logger.info("the run's data and test cases")
    full = prepare_training_data(config)
    vocab = full.vocab
    size = vocab.size
    split = ranker_split(full.split.train, settings.ranker_share, full.split.per_user,
                         config.train.eval_seed)
    logger.info("stage 1: %d events, ranker: %d events", len(split.stage1), len(split.ranker))
    s1 = stage1_data(config, split.stage1, full.items)
    t0 = time.perf_counter()
    model, s1_vocab = train_stage1(config, s1, args.run_dir)
    stage1_seconds = time.perf_counter() - t0
    to_s1 = index_map(vocab, s1_vocab)

    logger.info("stage 1's tables in the run's index space")
    item_emb = model.item_embeddings()[to_s1]
    item_emb[to_s1 == 0] = 0.0
    texts = np.asarray([t if isinstance(t, str) else "" for t in vocab.text], dtype=object)
    text_emb = np.concatenate([model.item_encoder.encode_text(
        tf.constant(texts[i:i + 8192].astype(str))).numpy() for i in range(0, size, 8192)])
    text_emb[0] = 0.0
    text_emb = normalised(text_emb)
    tfidf = LexicalTable.build(vocab.text, config.ranking.text_terms)
    grams = {}
    s1_sessions = sessionize(split.stage1, vocab, config.data.sessions,
                             config.data.pairs.event_weights,
                             config.data.pairs.default_event_weight)
    s1_counts = s1_vocab.counts[to_s1] * (to_s1 > 0)

    logger.info("EASE on the whole training period (its λ chosen on its validation slice)")
    ease = baselines.ease(full.sessions, vocab, full.cases.queries, lam=args.lam, k=k,
                          seed=config.train.eval_seed)
    lam = float(ease.tuning["chosen"]) if args.lam is None else args.lam
    valid = np.ones(size, bool)
    valid[0] = False
    test_cold = full.cases.cold
    reference = {"ease": target_ranks(ease.queries, ease.items, full.cases.targets,
                                      full.cases.queries, valid)}
    tfidf_test = baselines.tfidf(vocab, full.cases.queries)
    reference["tfidf_text"] = target_ranks(tfidf_test.queries, tfidf_test.items,
                                           full.cases.targets, full.cases.queries, valid)

    logger.info("item-item tables (λ %s, M %d) and skip-gram vectors", lam, settings.table_size)

    def item_table(sessions):
        rk = config.ranking
        table = build_item_table(sessions, size, rk.estimator, settings.table_size,
                                 rk.neighbours, lam, k=k, seed=config.train.eval_seed)
        logger.info("item-item table: %s", json.dumps(table.info))
        return table

    tables_s1 = F.Tables(item_emb, item_table(s1_sessions),
                         s1_counts, text_emb, tfidf,
                         cached(Path(args.run_dir) / f"i2v_stage1_{args.i2v_epochs}.npy",
                                lambda: baselines.item2vec_gensim(
                                    s1_sessions, vocab, [], seed=args.seed,
                                    epochs=args.i2v_epochs).items),
                         grams)
    tables_full = F.Tables(item_emb, item_table(full.sessions),
                           vocab.counts, text_emb, tfidf,
                           cached(Path(args.run_dir) / f"i2v_full_{args.i2v_epochs}.npy",
                                  lambda: baselines.item2vec_gensim(
                                      full.sessions, vocab, [], seed=args.seed,
                                      epochs=args.i2v_epochs).items),
                           grams)

    def embed(cases):
        history = histories_from_lists([to_s1[np.asarray(q, np.int64)] for q in cases.queries],
                                       config.model.history_length)
        return model.query_embeddings(history)

    rc, groups = ranker_cases(split.ranker, vocab, config, split.per_user,
                              config.train.eval_seed, settings.cases_per_session)
    ranker_q = Queries(rc, s1_counts[rc.targets] == 0, embed(rc))
    test_q = Queries(full.cases, test_cold, embed(full.cases))
    logger.info("%d ranker cases (%d cold), %d test cases (%d cold)", len(rc),
                int(ranker_q.cold.sum()), len(full.cases), int(test_cold.sum()))
    reference["stage1"] = target_ranks(test_q.embeddings, item_emb, full.cases.targets,
                                       full.cases.queries, valid & (to_s1 > 0))

    width = max(widths)
    recall = {}
    for share, label in ((0.0, "two_tower"), (1.0, "table"), (settings.table_share, "union")):
        c, m, _, _ = F.candidates(test_q.embeddings, tables_full, test_q.queries, width, share)
        recall[label] = {n: F.candidate_recall(c[:, :n], m[:, :n], test_q.targets)
                         for n in widths}
        recall[label + "_cold"] = {n: F.candidate_recall(c[test_cold, :n], m[test_cold, :n],
                                                         test_q.targets[test_cold])
                                   for n in widths}
    logger.info("candidate recall (test): %s", json.dumps(recall))

    def lists(q: Queries, tables):
        c, m, a, b = F.candidates(q.embeddings, tables, q.queries, width, settings.table_share)
        feats = F.candidate_features(q.embeddings, tables, q.queries, c, m, a, b)
        labels = ((c == q.targets[:, None]) & m).astype(np.float32)
        return c, m, feats, labels

    t0 = time.perf_counter()
    r_c, r_m, r_f, r_l = lists(ranker_q, tables_s1)
    t_c, t_m, t_f, t_l = lists(test_q, tables_full)
    feature_seconds = time.perf_counter() - t0
    logger.info("features: %.1f s; ranker-case recall@%d %.4f", feature_seconds, width,
                F.candidate_recall(r_c, r_m, ranker_q.targets))
    fit_rows, val_rows = split_validation(groups, settings.validation_share, args.seed)
    warm_fit = fit_rows[~ranker_q.cold[fit_rows]]
    unchanged = (r_f.copy(), r_l.copy()) if any(
        VARIANTS[v][3] is not None for v in filter(None, args.variants.split(","))) else None

    def show_as_new(share, f, labels):
        rng = np.random.default_rng([args.seed, 5])
        as_new = np.sort(rng.choice(warm_fit, size=int(round(share * len(fit_rows))),
                                    replace=False))
        kept = F.present_as_new(f, r_c, r_m, labels, ranker_q.embeddings, tables_s1, as_new)
        logger.info("%d fit cases show their target as new (%d of them still in their list)",
                    len(as_new), kept)

    show_as_new(settings.new_share, r_f, r_l)

    def train_and_rank(n, columns, rows, on, ranks_of, variant=None):
        change, hidden, epochs, new_share = VARIANTS[variant] if variant else (None,) * 4
        base_f, base_l = r_f, r_l
        if new_share is not None:
            base_f, base_l = unchanged[0].copy(), unchanged[1].copy()
            show_as_new(new_share, base_f, base_l)
        fit_f = base_f[rows, :n]
        c, m, f, q = on
        f = f[:, :n]
        if change is not None:
            fit_f, f = change(fit_f, r_m[rows, :n]), change(f, m[:, :n])
        model_r = fit_ranker(fit_f, r_m[rows, :n], base_l[rows, :n],
                             hidden or settings.hidden_units, epochs or settings.epochs,
                             settings.learning_rate, settings.batch_size, args.seed, columns)
        s = score_lists(model_r, f, m[:, :n], columns)
        return list_ranks(s, c[:, :n], m[:, :n], q.targets, miss_rank=max(n, 50) + 1)

    validation = {}
    val_on = (r_c[val_rows], r_m[val_rows], r_f[val_rows],
              Queries(Cases([rc.queries[i] for i in val_rows], rc.targets[val_rows],
                            ranker_q.cold[val_rows]), ranker_q.cold[val_rows], None))
    for n in widths:
        ranks = train_and_rank(n, None, fit_rows, val_on, None)
        validation[n] = scores(ranks, ranker_q.cold[val_rows], k)
        logger.info("validation N=%d: %s", n, row(f"N={n}", validation[n]))
    chosen = max(widths, key=lambda n: (validation[n]["hr_all"], validation[n]["ndcg_all"]))
    logger.info("chosen N=%d on validation", chosen)

    all_rows = fit_rows  # the validation cases chose the settings; they stay out
    test_on = (t_c, t_m, t_f, test_q)
    results = {name: scores(r, test_cold, k) for name, r in reference.items()}
    t0 = time.perf_counter()
    results["ranker"] = scores(train_and_rank(chosen, None, all_rows, test_on, None),
                               test_cold, k)
    ranker_seconds = time.perf_counter() - t0
    variants = {}
    for variant in filter(None, args.variants.split(",")):
        val = scores(train_and_rank(chosen, None, fit_rows, val_on, None, variant),
                     ranker_q.cold[val_rows], k)
        test = scores(train_and_rank(chosen, None, all_rows, test_on, None, variant),
                      test_cold, k)
        variants[variant] = {"validation": val, "test": test}
        logger.info("variant %s: validation %s", variant, row(variant, val))
    groups_left_out = {"all": list(F.FEATURE_GROUPS), "none": []}.get(
        args.ablations, args.ablations.split(","))
    ablation = {}
    for group, names in F.FEATURE_GROUPS.items():
        if group not in groups_left_out:
            continue
        columns = [j for j, name in enumerate(F.FEATURES) if name not in names]
        ablation[group] = scores(train_and_rank(chosen, columns, all_rows, test_on, None),
                                 test_cold, k)
    for group in ("two_tower", "item_item") if args.ablations == "all" else ():
        columns = [j for j, name in enumerate(F.FEATURES) if name in F.FEATURE_GROUPS[group]]
        ablation[f"only {group}"] = scores(train_and_rank(chosen, columns, all_rows, test_on,
                                                          None), test_cold, k)

    print(f"\n{args.config}, seed {args.seed}: {len(full.cases)} test cases "
          f"({int(test_cold.sum())} cold), {len(rc)} ranker cases, N={chosen} (validation), "
          f"M={settings.table_size}, table share {settings.table_share}, EASE λ {lam}")
    print(HEADER)
    for name in ("stage1", "ease", "tfidf_text", "ranker"):
        print(row(name, results[name]))
    for group, s in ablation.items():
        print(row(f"ranker {'' if group.startswith('only') else 'without '}{group}", s))
    for variant, figures in variants.items():
        print(row(f"ranker {variant} (test)", figures["test"]))
    print("  candidate recall HR@N (test):")
    for label, values in recall.items():
        print(f"    {label:<16}" + "  ".join(f"N={n}: {v:.4f}" for n, v in values.items()))
    print("  validation (ranker cases) by N:")
    for n, s in validation.items():
        print(row(f"N={n}", s))
    print(row(f"N={chosen} (the ranker)", validation[chosen]))
    for variant, figures in variants.items():
        print(row(f"N={chosen} {variant}", figures["validation"]))
    print(f"  seconds: stage 1 {stage1_seconds:.0f}, features {feature_seconds:.0f}, "
          f"ranker fit {ranker_seconds:.0f}, total {time.perf_counter() - started:.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "config": args.config, "seed": args.seed, "chosen_n": chosen,
            "settings": dataclasses.asdict(settings), "lambda": lam, "results": results,
            "ablation": ablation, "variants": variants, "recall": recall, "validation": validation,
            "cases": {"test": len(full.cases), "test_cold": int(test_cold.sum()),
                      "ranker": len(rc)}}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
