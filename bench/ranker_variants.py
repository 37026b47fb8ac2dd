"""Ranker variants on a trained run's own stage 1, in the product's code path.

    TFREC_DATA=/work/shared/data PYTHONPATH=. python bench/ranker_variants.py \\
        --run runs/eval/or-s43 --variants base,ens3,ens5

The run's two-tower is restored from its folder; the ranker's lists and the
whole-period tables are made as `tfrec train` makes them
(`tfrec.ranking.stage.ranker_lists`, the run's own config and split), and
each variant's ranker is fit on the same lists. Every variant is measured
on the ranker's validation cases (what may choose between them) and on the
run's held-out cases (HR@10 / NDCG@10 all, warm, cold and cold HR@50; for
information: the test cases choose nothing). `base` is the ranker
`tfrec train` fits (the run's seed); `seedS` is the same ranker from the
S-th other seed; `ensK` averages the scores of K rankers (the run's seed
and the next K - 1), whose single members give the ranker's seed spread;
`jointK` is one `CandidateRanker` of K members (`ranking.members`: K MLPs
fit together on the same batches, each on its own loss). `sort:NAME` fits
nothing: the lists in the order of one feature column (`F.FEATURES`), ties
broken by the two-tower score (what a ranker that learned only that column
would score).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pickle
import sys
import time
from pathlib import Path

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
from tfrec.config import RankingConfig  # noqa: E402,I100
from tfrec.metrics import rank_targets, score_cases
from tfrec.ranking import features as F
from tfrec.ranking.ranker import fit_ranker, list_ranks, score_lists
from tfrec.ranking.stage import event_counts, ranker_lists, stage1_training_data
from tfrec.run import load_run, prepare_training_data

logger = logging.getLogger("ranker_variants")
# The ranking settings that change only the ranker's fit, not its lists.
FIT_SETTINGS = {"epochs", "learning_rate", "batch_size", "hidden_units", "members"}


def make_lists(run: Path, cache: Path | None, ranking: dict | None = None):
    """(config, lists, test (cases, candidates, mask, features)), cached at `cache`;
    `ranking`: ranking settings that replace the run's."""
    if cache is not None and cache.exists():
        with cache.open("rb") as f:
            made = pickle.load(f)
        if not hasattr(made[1], "new_rows"):  # lists cached before they recorded them
            made[1].new_rows = np.zeros(0, np.int64)
        if not hasattr(made[1], "weights"):
            made[1].weights = None
        # Settings of the ranker's fit apply to cached lists; settings that make other
        # lists need lists of their own.
        changed = {key: value for key, value in (ranking or {}).items()
                   if getattr(made[0].ranking, key) != value}
        if set(changed) - FIT_SETTINGS:
            raise SystemExit(f"the lists cached at {cache} were made with "
                             f"{', '.join(f'{k}={getattr(made[0].ranking, k)}' for k in changed)}"
                             ": give another --cache for other lists")
        if changed:
            made = (dataclasses.replace(made[0], ranking=dataclasses.replace(
                made[0].ranking, **changed)), *made[1:])
        return made
    config, vocab, model, _ = load_run(run)
    if ranking:
        ranking = dataclasses.replace(config.ranking, **ranking)
        config = dataclasses.replace(config, ranking=ranking)
    data = prepare_training_data(config)
    if list(data.vocab.ids) != list(vocab.ids):
        raise SystemExit("the data's vocabulary is not the run's: another data folder?")
    stage1, split = stage1_training_data(config, data)
    lists, tables = ranker_lists(config, data, stage1, split, model)
    cases = data.cases
    _, _, query_emb = rank_targets(model, cases.queries, cases.targets,
                                   config.model.history_length)
    rk = config.ranking
    cands, mask, tt_place, table_place = F.candidates(query_emb, tables, cases.queries,
                                                      rk.num_candidates, rk.table_share,
                                                      new_slots=rk.new_slots,
                                                      text_slots=rk.text_slots)
    feats = F.candidate_features(query_emb, tables, cases.queries, cands, mask, tt_place,
                                 table_place)
    made = (config, lists, (cases, cands, mask, feats))
    if cache is not None:
        with cache.open("wb") as f:
            pickle.dump(made, f)
    return made


def with_recent_counts(config, lists, cands, feats, share: float):
    """(lists, test features) with a recent-popularity column appended (see --recent); an
    item without behaviour (or shown as new) has 0, as its other count features."""
    data = prepare_training_data(config)
    _, split = stage1_training_data(config, data)

    def recent(events):
        time_ = events["time"].to_numpy()
        return np.log1p(event_counts(events[time_ >= np.quantile(time_, 1.0 - share,
                                                                 method="higher")],
                                     data.vocab)).astype(np.float32)

    behaviour = F.FEATURES.index("has_behaviour")
    fit = recent(split.stage1)[lists.candidates] * lists.features[..., behaviour]
    test = recent(data.split.train)[cands] * feats[..., behaviour]
    lists = dataclasses.replace(
        lists, features=np.concatenate([lists.features, fit[..., None]], -1))
    return lists, np.concatenate([feats, test[..., None]], -1)


def last_item_columns(table, i2v, text, queries: list, cands: np.ndarray,
                      decay: float) -> np.ndarray:
    """[n, N, 4] order-aware trial features of each candidate: the table's weight on it
    from the query's last item, the table's weights summed over the query's distinct
    items with weight decay ** (its places before the last, at its latest place), and
    the skip-gram and text cosines with the last item."""
    matrix = table.matrix().tocsr()
    out = np.zeros(cands.shape + (4,), np.float32)
    for r, query in enumerate(queries):
        query = np.asarray(query, np.int64)
        if not len(query):
            continue
        latest = {}
        for place, item in enumerate(query[::-1]):
            latest.setdefault(int(item), place)
        items = np.fromiter(latest, np.int64)
        rows = matrix[items][:, cands[r]].toarray()  # [distinct, N]
        age = np.fromiter(latest.values(), np.float64)
        out[r, :, 0] = rows[0] if query[-1] == items[0] else 0.0
        out[r, :, 1] = (decay ** age) @ rows
        out[r, :, 2] = i2v[cands[r]] @ i2v[query[-1]]
        out[r, :, 3] = text[cands[r]] @ text[query[-1]]
    return out


def trial_columns(run: Path, config, lists, cache: Path | None, make, copies_ok=False):
    """(fit, test) trial columns: read from `cache`, or made by `make(model, vocab, data,
    stage1, ranker_queries)` from the run (its ranker's cases checked against the
    lists') and saved there."""
    from tfrec.ranking.protocol import ranker_cases

    if cache is not None and cache.exists():
        with cache.open("rb") as f:
            return pickle.load(f)
    _, vocab, model, _ = load_run(run)
    data = prepare_training_data(config)
    stage1, split = stage1_training_data(config, data)
    rk = config.ranking
    ranker_cases_, _ = ranker_cases(split.ranker, vocab, config, split.per_user,
                                    config.train.eval_seed, rk.cases_per_session)
    n = len(ranker_cases_.targets)
    queries = list(ranker_cases_.queries)
    if not np.array_equal(ranker_cases_.targets, lists.targets[:n]):
        raise SystemExit("the ranker's cases are not the cached lists' cases")
    if len(lists.targets) > n:
        if not copies_ok:
            raise SystemExit("these trial columns need lists without copies shown as new: "
                             "add --set new_copies=false")
        # The copies shown as new (`ranking.new_copies`) follow the cases: one per warm
        # fit case, the same query and candidates.
        copies = len(lists.targets) - n
        fit_rows = lists.fit_rows[:len(lists.fit_rows) - copies]
        counts = event_counts(split.stage1, vocab)
        warm = fit_rows[counts[lists.targets[fit_rows]] > 0]
        if len(warm) != copies or not np.array_equal(lists.candidates[n:],
                                                     lists.candidates[warm]):
            raise SystemExit("the copies shown as new do not follow the warm fit cases")
        queries += [queries[i] for i in warm]
    fit, test = make(model, vocab, data, stage1, queries)
    if cache is not None:
        with cache.open("wb") as f:
            pickle.dump((fit, test), f)
    return fit, test


def appended(lists, feats, fit: np.ndarray, test: np.ndarray):
    """(lists, test features) with the trial columns `fit` and `test` appended."""
    lists = dataclasses.replace(lists, features=np.concatenate([lists.features, fit], -1))
    return lists, np.concatenate([feats, test], -1)


def with_last_item(run: Path, config, lists, cases, cands, mask, feats, decay: float,
                   cache: Path | None):
    """(lists, test features) with the four `last_item_columns` appended: stage 1's
    table for the ranker's lists, the whole period's for the test cases (as `tfrec
    train` makes them); the table's and skip-gram columns are 0 where the candidate
    shows no behaviour (an item without behaviour, or a target shown as new)."""
    from tfrec.ranking.stage import _table, item_vectors, lambdas_near

    def make(model, vocab, data, stage1, queries):
        model.item_embeddings()  # builds the restored model's layers
        _, text, i2v = item_vectors(model, vocab)
        logger.info("last-item features: the tables of stage 1 and of the whole period")
        t1 = _table(config, stage1.sessions, vocab.size)
        tw = _table(config, data.sessions, vocab.size,
                    lambdas_near(t1, config.ranking.ease_lambdas))
        return (last_item_columns(t1, i2v, text, queries, lists.candidates, decay),
                last_item_columns(tw, i2v, text, cases.queries, cands, decay))

    fit, test = trial_columns(run, config, lists, cache, make)
    behaviour = F.FEATURES.index("has_behaviour")
    for columns, f in ((fit, lists.features), (test, feats)):
        columns[..., :3] *= f[..., behaviour, None]
    return appended(lists, feats, fit * lists.mask[..., None], test * mask[..., None])


def knn_columns(sessions, size: int, queries: list, cands: np.ndarray) -> np.ndarray:
    """[n, N, 3] trial features of each candidate from cosine ItemKNN over `sessions`
    (every neighbour kept): its cosines with the query's distinct items summed and
    their max, and log(1 + how many of those items ever shared a session with it)."""
    from tfrec.ranking.item_item import active_gram, basket_matrix, cosine_weights

    active, gram = active_gram(basket_matrix(sessions, size))
    cosine = np.zeros((size, size), np.float32)
    cosine[np.ix_(active, active)] = cosine_weights(gram, 0)
    shared = np.zeros((size, size), bool)
    shared[np.ix_(active, active)] = gram > 0
    np.fill_diagonal(shared, False)
    out = np.zeros(cands.shape + (3,), np.float32)
    for r, query in enumerate(queries):
        items = np.unique(np.asarray(query, np.int64))
        if not len(items):
            continue
        rows = cosine[items][:, cands[r]]
        out[r, :, 0] = rows.sum(0)
        out[r, :, 1] = rows.max(0)
        out[r, :, 2] = np.log1p(shared[items][:, cands[r]].sum(0))
    return out


def with_knn(run: Path, config, lists, cases, cands, mask, feats, cache: Path | None):
    """(lists, test features) with the three `knn_columns` appended: stage 1's sessions
    for the ranker's lists, the whole period's for the test cases; 0 where the candidate
    shows no behaviour (an item without behaviour, or a target shown as new)."""

    def make(model, vocab, data, stage1, queries):
        return (knn_columns(stage1.sessions, vocab.size, queries, lists.candidates),
                knn_columns(data.sessions, vocab.size, cases.queries, cands))

    fit, test = trial_columns(run, config, lists, cache, make)
    shown = lists.features[..., F.FEATURES.index("has_behaviour")] * lists.mask
    test_shown = feats[..., F.FEATURES.index("has_behaviour")] * mask
    return appended(lists, feats, fit * shown[..., None], test * test_shown[..., None])


def cc_columns(table, text: np.ndarray, counts: np.ndarray, queries: list,
               cands: np.ndarray, neighbours: int, chunk: int = 512) -> np.ndarray:
    """[n, N, 2] trial features of each candidate c: the table's score for the query of
    the `neighbours` items with behaviour nearest to c by text (cosine of the text
    vectors, c itself left out), their mean weighted by the cosine and their max. The
    same for an item with or without behaviour: what the query's co-items say of the
    items whose text is like the candidate's."""
    warm = np.flatnonzero(counts > 0)
    warm = warm[warm > 0]
    sims = text @ text[warm].T  # [V, W]
    sims[warm, np.arange(len(warm))] = -np.inf  # never an item's own row
    top = np.argpartition(-sims, neighbours, axis=1)[:, :neighbours]
    nn = warm[top]  # [V, K]
    w = np.maximum(np.take_along_axis(sims, top, 1), 0.0).astype(np.float32)
    w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
    out = np.zeros(cands.shape + (2,), np.float32)
    for start in range(0, len(queries), chunk):
        part = queries[start:start + chunk]
        scores = table.scores(part)  # [b, V]
        c = np.maximum(cands[start:start + len(part)], 0)
        got = scores[np.arange(len(part))[:, None, None], nn[c]]  # [b, N, K]
        out[start:start + len(part), :, 0] = (got * w[c]).sum(-1)
        out[start:start + len(part), :, 1] = got.max(-1)
    return out


def with_cc(run: Path, config, lists, cases, cands, mask, feats, neighbours: int,
            cache: Path | None):
    """(lists, test features) with the two `cc_columns` appended: stage 1's table and
    counts for the ranker's lists, the whole period's for the test cases."""
    from tfrec.ranking.stage import _table, item_vectors, lambdas_near

    def make(model, vocab, data, stage1, queries):
        model.item_embeddings()
        _, text, _ = item_vectors(model, vocab)
        _, split = stage1_training_data(config, data)
        t1 = _table(config, stage1.sessions, vocab.size)
        tw = _table(config, data.sessions, vocab.size,
                    lambdas_near(t1, config.ranking.ease_lambdas))
        logger.info("cc features: %d lists, %d test cases", len(queries), len(cases.queries))
        return (cc_columns(t1, text, event_counts(split.stage1, vocab), queries,
                           lists.candidates, neighbours),
                cc_columns(tw, text, vocab.counts, cases.queries, cands, neighbours))

    fit, test = trial_columns(run, config, lists, cache, make, copies_ok=True)
    return appended(lists, feats, fit * lists.mask[..., None], test * mask[..., None])


def sort_scores(features: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    """Scores that order each list by feature `name`, ties by the two-tower score."""
    tt = features[..., F.FEATURES.index("tt_score")]
    spread = np.abs(tt).max() + 1.0
    order = np.where(mask, features[..., F.FEATURES.index(name)], -np.inf)
    dense = np.zeros(order.shape)
    for i, row in enumerate(order):  # equal values share a rank
        dense[i] = np.unique(row, return_inverse=True)[1]
    return dense + 0.5 * (tt / spread)


def figures(ranks: np.ndarray, cases, k: int) -> dict:
    s = score_cases(ranks, cases, k)
    cold = cases.cold
    return {"all": s["all"][f"hr@{k}"], "warm": s["warm"][f"hr@{k}"],
            "cold": s["cold"][f"hr@{k}"], "ndcg_all": s["all"][f"ndcg@{k}"],
            "ndcg_warm": s["warm"][f"ndcg@{k}"],
            "cold_hr50": float(np.mean(ranks[cold] < 50)) if cold.any() else 0.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a run folder trained with both stages")
    parser.add_argument("--variants", default="base,ens3,ens5",
                        help="comma list of base, seedS (S = 1, 2, ...), ensK, jointK, plainK "
                             "(jointK without the trial columns)")
    parser.add_argument("--cache", help="pickle the lists here and read them back next time")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a ranking setting replacing the run's (a number), e.g. "
                             "new_item_share=0")
    parser.add_argument("--recent", type=float, metavar="SHARE",
                        help="a trial feature: log(1 + the candidate's events in the last SHARE "
                             "of the period's events), stage 1's period for the ranker's lists, "
                             "the whole training period for the test cases")
    parser.add_argument("--last-item", type=float, metavar="DECAY",
                        help="trial features: the table's weight from the query's last item, "
                             "its weights summed with decay DECAY per place before the last, "
                             "skip-gram and text cosines with the last item "
                             "(`last_item_columns`)")
    parser.add_argument("--knn", action="store_true",
                        help="trial features from cosine ItemKNN: the candidate's cosines with "
                             "the query's items summed and their max, and how many of them ever "
                             "shared a session with it (`knn_columns`)")
    parser.add_argument("--cc", type=int, metavar="K",
                        help="trial features: the table's score of the K items with behaviour "
                             "nearest to the candidate by text (`cc_columns`)")
    parser.add_argument("--ranker-seed", type=int,
                        help="the rankers' seed (default: the run's train.seed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    ranking = {key: (value.lower() in ("1", "true", "yes")
                     if isinstance(getattr(RankingConfig, key), bool)
                     else type(getattr(RankingConfig, key))(value))
               for key, value in (item.split("=", 1) for item in args.set)}
    config, lists, (cases, cands, mask, feats) = make_lists(
        Path(args.run), Path(args.cache) if args.cache else None, ranking)
    if args.recent:
        lists, feats = with_recent_counts(config, lists, cands, feats, args.recent)
    width = len(F.FEATURES)
    if args.last_item:
        lists, feats = with_last_item(
            Path(args.run), config, lists, cases, cands, mask, feats, args.last_item,
            Path(f"{args.cache}.last{args.last_item:g}") if args.cache else None)
    if args.knn:
        lists, feats = with_knn(Path(args.run), config, lists, cases, cands, mask, feats,
                                Path(f"{args.cache}.knn") if args.cache else None)
    if args.cc:
        lists, feats = with_cc(Path(args.run), config, lists, cases, cands, mask, feats,
                               args.cc, Path(f"{args.cache}.cc{args.cc}") if args.cache
                               else None)
    rk, k = config.ranking, config.train.eval_k
    seed = config.train.seed if args.ranker_seed is None else args.ranker_seed
    miss = cands.shape[1] + 1
    rows, val = lists.fit_rows, lists.validation_rows
    weights = None if lists.weights is None else lists.weights[rows]
    vc, vm, vt, vf = (lists.candidates[val], lists.mask[val], lists.targets[val],
                      lists.features[val])
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    needed = 1
    for v in variants:
        if v.startswith("ens"):
            needed = max(needed, int(v[3:]))
        elif v.startswith("seed"):
            needed = max(needed, int(v[4:]) + 1)
    joint = {}
    for v in variants:
        if v.startswith(("joint", "plain")):
            # plainK: jointK reading the library's features only (not the trial columns).
            t0 = time.perf_counter()
            columns = list(range(width)) if v.startswith("plain") else None
            ranker = fit_ranker(lists.features[rows], lists.mask[rows], lists.labels[rows],
                                rk.hidden_units, rk.epochs, rk.learning_rate, rk.batch_size,
                                seed, columns=columns, members=int(v[5:]), weights=weights)
            joint[v] = (score_lists(ranker, vf, vm, columns),
                        score_lists(ranker, feats, mask, columns))
            logger.info("%s fit in %.1f s", v, time.perf_counter() - t0)
    for v in variants:
        if v.startswith("sort:"):
            name = v[5:]
            if name not in F.FEATURES:
                raise SystemExit(f"{v}: no feature {name!r} (features: {', '.join(F.FEATURES)})")
            joint[v] = tuple(sort_scores(f, m, name) for f, m in ((vf, vm), (feats, mask)))
    if all(v.startswith(("joint", "plain", "sort:")) for v in variants):
        needed = 0
    members, seconds = [], []
    for j in range(needed):
        t0 = time.perf_counter()
        ranker = fit_ranker(lists.features[rows], lists.mask[rows], lists.labels[rows],
                            rk.hidden_units, rk.epochs, rk.learning_rate, rk.batch_size,
                            seed + j, members=1, weights=weights)
        seconds.append(time.perf_counter() - t0)
        members.append((score_lists(ranker, vf, vm), score_lists(ranker, feats, mask)))
        logger.info("ranker %d fit in %.1f s", j, seconds[-1])
    out = {"run": args.run, "validation_cases": int(len(val)), "test_cases": int(len(cases)),
           "fit_seconds": [round(s, 1) for s in seconds], "variants": {}}
    print(f"{'variant':<8} {'val HR@10':>9} {'all':>7} {'warm':>7} {'cold':>7} "
          f"{'NDCG all':>8} {'NDCG warm':>9} {'cold@50':>7}")
    for v in variants:
        if v in joint:
            val_scores, test_scores = joint[v]
        else:
            if v == "base":
                use = [0]
            elif v.startswith("seed"):
                use = [int(v[4:])]
            else:
                use = list(range(int(v[3:])))
            val_scores = np.mean([members[j][0] for j in use], axis=0)
            test_scores = np.mean([members[j][1] for j in use], axis=0)
        val_ranks = list_ranks(val_scores, vc, vm, vt, miss)
        val_hr = float(np.mean(val_ranks < k))
        shown = np.isin(val, lists.new_rows)
        if shown.any():
            print(f"{v}: validation HR@{k} of the {int(shown.sum())} cases shown as new "
                  f"{np.mean(val_ranks[shown] < k):.4f}, of the others "
                  f"{np.mean(val_ranks[~shown] < k):.4f}")
        fig = figures(list_ranks(test_scores, cands, mask, cases.targets, miss), cases, k)
        fig["validation_hr"] = val_hr
        out["variants"][v] = fig
        print(f"{v:<8} {val_hr:9.4f} {fig['all']:7.4f} {fig['warm']:7.4f} {fig['cold']:7.4f} "
              f"{fig['ndcg_all']:8.4f} {fig['ndcg_warm']:9.4f} {fig['cold_hr50']:7.4f}")
    print(f"({time.perf_counter() - started:.0f} s; rankers fit in "
          f"{', '.join(f'{s:.0f}' for s in seconds)} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
