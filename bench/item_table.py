"""The item-item table (`tfrec.ranking.item_table`): accuracy beside dense EASE on the
real catalogues, build time and peak memory beside dense EASE on generated ones.

    python bench/item_table.py accuracy                                # Online Retail, λ 20
    python bench/item_table.py accuracy --config tfrec/configs/goodbooks.yaml --lam 50
    python bench/item_table.py scale --items 20000 100000 1000000      # generated data
    python bench/item_table.py layer                                   # ItemItemScorer speed
    python bench/item_table.py grid --config tfrec/configs/goodbooks.yaml   # the λ search
    python bench/item_table.py recency --set train.until=2011-10-01 \
        --set train.split_date=2011-07-15                            # sessions weighted by age

accuracy: the held-out cases of `tfrec evaluate` (`prepare_training_data` of
the config), every catalogue item ranked, the query's own items excluded, ties
at random with a fixed seed (`target_ranks`, as the baselines are scored).
Dense EASE is `tfrec.evaluate.baselines.ease` at the given λ (the value the
baseline chooses on its validation slice: 20 for Online Retail, 50 for
goodbooks-10k; fixed here so that each table costs one fit). Each table is a
scorer alone (a query's score for c: the sum of its items' weights to c): HR@10
and NDCG@10 over all and warm targets, build seconds and entries, for each
`--variants` estimator:M[:C] (M co-items per row, C neighbours).

scale: generated sessions (`tfrec.data.synthetic.generate_baskets`: sessions
inside planted item clusters of --cluster-size items, Zipf popularity inside a
cluster), --events-per-item events per item. Each (size, estimator) runs in a
process of its own, so its peak RSS (ru_maxrss) is its own; the RSS after
generating the data is printed beside it. Dense EASE runs where its a x a
float64 matrices fit (--dense-max items). HR@10 is over --cases held-out
sessions (one item hidden, the rest the query; those sessions are not fitted).

layer: `ItemItemScorer.candidates` (top 100) and `.score` (100 candidates) on
a random table of --items items x M co-items, for --batch histories of
--length items, eager and in a tf.function, milliseconds per call (median of
--repeats), beside the numpy `ItemItemTable.scores` of the same histories.

grid: the λ search of the ranking stage's stage-1 table (`choose_lambda` over
`ranking.ease_lambdas` on the run config's stage-1 sessions), timed three ways
in one process, taking turns for --rounds rounds: as it runs now (what does not depend on
λ computed once; neighbourhoods of a dense-ish Gram matrix by a partition per
row), the same with the neighbourhoods sorted, and every λ fitted from scratch
with sorted neighbourhoods (the previous code). Prints each way's seconds and
the chosen λ, and checks that the three give the same validation figures.

recency: dense EASE over sessions weighted by their age (each session's
rows of the Gram matrix times 0.5 ** (age / half-life), the age in days
before the last training session), beside the unweighted fit, at each
--lams λ (scaled by the mean weight, so that the ridge keeps its share of
the diagonal). The held-out cases as in accuracy; HR@10 over warm targets
and warm NDCG@10 (items without behaviour score 0 under every fit). --set
overrides the run config, e.g. a validation period before the test one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- accuracy on the real catalogues -----------------------------------------------------

def accuracy(args) -> int:
    import numpy as np

    import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    from tfrec.evaluate import baselines
    from tfrec.ranking import item_item
    from tfrec.metrics import hit_rate, ndcg, target_ranks
    from tfrec.ranking import item_table
    from tfrec.run import load_run_config, prepare_training_data

    data = prepare_training_data(load_run_config(args.config))
    cases, vocab = data.cases, data.vocab
    warm = ~cases.cold
    valid = np.ones(vocab.size, dtype=bool)
    valid[0] = False

    def row(name, queries, items, seconds, entries):
        ranks = target_ranks(queries, items, cases.targets, cases.queries, valid)
        print(f"{name:<28}{hit_rate(ranks, 10):>9.4f}{hit_rate(ranks[warm], 10):>10.4f}"
              f"{ndcg(ranks, 10):>10.4f}{ndcg(ranks[warm], 10):>11.4f}{seconds:>9.1f}"
              f"{entries:>12,}", flush=True)

    baskets = item_item.basket_matrix(data.sessions, vocab.size)
    active = int((np.bincount(baskets.indices, minlength=vocab.size)[1:] > 0).sum())
    print(f"{args.config}: {len(cases):,} cases ({int(warm.sum()):,} warm), {vocab.size - 1:,} "
          f"items ({active:,} with training events), {baskets.shape[0]:,} training sessions; "
          f"λ {args.lam:g}")
    print(f"{'scorer':<28}{'HR@10':>9}{'HR warm':>10}{'NDCG@10':>10}{'NDCG warm':>11}"
          f"{'build s':>9}{'entries':>12}")
    started = time.perf_counter()
    ease = baselines.ease(data.sessions, vocab, cases.queries, lam=args.lam)
    row("dense EASE (baseline)", ease.queries, ease.items, time.perf_counter() - started,
        active * active)
    del ease
    queries = item_item.multi_hot(cases.queries, vocab.size)
    for variant in args.variants:
        parts = variant.split(":")
        estimator, table_size = parts[0], int(parts[1])
        neighbours = int(parts[2]) if len(parts) > 2 else item_table.NEIGHBOURS
        started = time.perf_counter()
        table = item_table.table_from_baskets(baskets, args.lam, estimator, table_size,
                                              neighbours)
        seconds = time.perf_counter() - started
        name = f"{estimator} M {table_size}"
        if estimator == "neighbourhood":
            name += f" C {neighbours}"
        row(name, queries, table.matrix().T.tocsr(), seconds, table.num_entries)
    return 0


def recency(args) -> int:
    import numpy as np
    from scipy import sparse

    import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    from tfrec.metrics import hit_rate, ndcg, target_ranks
    from tfrec.ranking import item_item
    from tfrec.run import load_run_config, prepare_training_data

    data = prepare_training_data(load_run_config(args.config, args.set))
    cases, vocab = data.cases, data.vocab
    warm = ~cases.cold
    valid = np.ones(vocab.size, dtype=bool)
    valid[0] = False
    baskets = item_item.basket_matrix(data.sessions, vocab.size)
    start = data.sessions.start_time.astype(np.float64)
    age = (start.max() - start) / 86400.0
    queries = item_item.multi_hot(cases.queries, vocab.size)
    print(f"{args.config} {' '.join(args.set)}: {int(warm.sum()):,} warm cases, "
          f"{baskets.shape[0]:,} training sessions over {age.max():.0f} days")
    print(f"{'half-life (days)':<18}{'λ':>6}{'HR@10 warm':>12}{'NDCG@10 warm':>14}")
    for half_life in [None, *args.half_lives]:
        weights = np.ones_like(age) if half_life is None else 0.5 ** (age / half_life)
        gram = (baskets.T @ (sparse.diags(weights) @ baskets)).toarray()
        for lam in args.lams:
            g = gram.copy()
            g[np.diag_indices_from(g)] += lam * weights.mean()
            inverse = np.linalg.inv(g)
            b = -inverse / np.diag(inverse)[None, :]
            b[np.diag_indices_from(b)] = 0.0
            warm_queries = [q for q, w in zip(cases.queries, warm) if w]
            ranks = target_ranks(queries[warm], sparse.csr_matrix(b.T), cases.targets[warm],
                                 warm_queries, valid)
            print(f"{'none' if half_life is None else f'{half_life:g}':<18}{lam:>6g}"
                  f"{hit_rate(ranks, 10):>12.4f}{ndcg(ranks, 10):>14.4f}", flush=True)
    return 0


# -- build cost on generated catalogues -----------------------------------------------------

def scale_child(num_items: int, estimator: str, args) -> dict:
    import numpy as np

    from tfrec.data.synthetic import generate_baskets
    from tfrec.ranking import item_item
    from tfrec.metrics import hit_rate, target_ranks
    from tfrec.ranking import item_table

    items, splits = generate_baskets(int(num_items * args.events_per_item), num_items,
                                     num_clusters=max(num_items // args.cluster_size, 1),
                                     seed=args.seed)
    rows = np.repeat(np.arange(len(splits) - 1, dtype=np.int64), np.diff(splits))
    baskets = item_item.binary_rows(rows, items.astype(np.int64), len(splits) - 1,
                                    num_items + 1)
    del items, rows
    # held-out cases: the last --cases sessions with >= 2 distinct items
    held = np.flatnonzero(np.diff(baskets.indptr) >= 2)[-args.cases:]
    cases = item_item.hold_out(baskets, held, np.random.default_rng(args.seed))
    fit, queries, targets = cases.fit, cases.queries, cases.targets
    del baskets, cases
    data_rss = rss_mb()
    started = time.perf_counter()
    table = item_table.table_from_baskets(fit, args.lam, estimator, args.table_size,
                                          args.neighbours, dense_max_items=10 ** 9)
    seconds = time.perf_counter() - started
    build_rss = rss_mb()
    valid = np.ones(num_items + 1, bool)
    valid[0] = False
    ranks = target_ranks(item_item.multi_hot(queries, num_items + 1),
                         table.matrix().T.tocsr(), np.asarray(targets), queries, valid)
    return {"items": num_items, "estimator": estimator, "sessions": int(fit.shape[0]),
            "events": int(fit.nnz), "seconds": round(seconds, 1),
            "data_rss_mb": round(data_rss), "peak_rss_mb": round(build_rss),
            "entries": table.num_entries, "hr@10": round(hit_rate(ranks, 10), 4),
            "cases": len(targets)}


def scale(args) -> int:
    print(f"generated: {args.events_per_item:g} events per item, clusters of "
          f"{args.cluster_size} items, λ {args.lam:g}, M {args.table_size}, C {args.neighbours}; "
          f"HR@10 on {args.cases:,} held-out sessions")
    print(f"{'items':>10} {'estimator':<14}{'sessions':>11}{'build s':>9}{'data RSS':>10}"
          f"{'peak RSS':>10}{'entries':>13}{'HR@10':>8}", flush=True)
    for num_items in args.items:
        for estimator in ("ease", "neighbourhood"):
            if estimator == "ease" and num_items > args.dense_max:
                gb = 2 * 8 * num_items ** 2 / 1e9
                print(f"{num_items:>10,} {'ease':<14} not run: two {num_items:,}² float64 "
                      f"matrices are {gb:,.0f} GB", flush=True)
                continue
            command = [sys.executable, os.path.abspath(__file__), "_child", str(num_items),
                       estimator] + args.forward
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode:
                print(f"{num_items:>10,} {estimator:<14} failed: {out.stderr[-400:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{num_items:>10,} {estimator:<14}{r['sessions']:>11,}{r['seconds']:>9.1f}"
                  f"{r['data_rss_mb']:>8,} MB{r['peak_rss_mb']:>7,} MB{r['entries']:>13,}"
                  f"{r['hr@10']:>8.4f}", flush=True)
    return 0


def layer(args) -> int:
    import numpy as np

    import tfrec  # noqa: F401
    import tensorflow as tf

    from tfrec.ranking.item_scorer import ItemItemScorer
    from tfrec.ranking.item_table import ItemItemTable

    rng = np.random.default_rng(0)
    n, m = args.items, args.table_size
    table = ItemItemTable(np.arange(n + 1, dtype=np.int64) * m,
                          rng.integers(1, n, n * m).astype(np.int32),
                          rng.standard_normal(n * m).astype(np.float32))
    scorer = ItemItemScorer.from_table(table)
    history = rng.integers(1, n, (args.batch, args.length)).astype(np.int32)
    candidate_ids = rng.integers(1, n, (args.batch, 100)).astype(np.int32)
    queries = [row.tolist() for row in history]

    def timed(fn):
        fn()
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return 1000 * float(np.median(times))

    candidates = tf.function(lambda h: scorer.candidates(h, 100))
    score = tf.function(scorer.score)
    print(f"table {n:,} items x {m} co-items; {args.batch} histories of {args.length} items")
    print(f"{'call':<44}{'ms':>8}")
    for name, fn in [
            ("ItemItemScorer.candidates(top 100), eager", lambda: scorer.candidates(history, 100)),
            ("ItemItemScorer.candidates(top 100), tf.function", lambda: candidates(history)),
            ("ItemItemScorer.score(100 ids), eager", lambda: scorer.score(history, candidate_ids)),
            ("ItemItemScorer.score(100 ids), tf.function", lambda: score(history, candidate_ids)),
            ("numpy ItemItemTable.scores (all items)", lambda: table.scores(queries))]:
        print(f"{name:<44}{timed(fn):>8.1f}", flush=True)
    return 0


def grid(args) -> int:
    import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    from tfrec.ranking import item_item, item_table
    from tfrec.ranking.stage import stage1_training_data
    from tfrec.run import load_run_config, prepare_training_data

    config = load_run_config(args.config)
    data = prepare_training_data(config)
    stage1, _ = stage1_training_data(config, data)
    baskets = item_item.basket_matrix(stage1.sessions, data.vocab.size)
    rk = config.ranking
    print(f"{args.config}: {baskets.shape[0]:,} stage-1 sessions, {data.vocab.size - 1:,} items, "
          f"λ grid {', '.join(f'{v:g}' for v in rk.ease_lambdas)}; estimator {rk.estimator}, "
          f"{rk.neighbours} neighbours")
    fit = item_table.table_from_baskets
    density = item_table.DENSE_ROWS_DENSITY
    ways = [("now (plan once, partition)", density, fit),
            ("plan once, sorted neighbourhoods", 2.0, fit),
            ("every λ from scratch, sorted (previous)", 2.0,
             lambda *a, cache=None, **k: fit(*a, **k))]
    figures = []
    print(f"{'way':<42}{'round':>6}{'seconds':>9}{'chosen λ':>10}")
    for round_ in range(1, args.rounds + 1):  # the ways take turns, so they meet the same load
        for name, dense_rows, fitter in ways:
            item_table.DENSE_ROWS_DENSITY, item_table.table_from_baskets = dense_rows, fitter
            started = time.perf_counter()
            tuning = item_table.choose_lambda(baskets, rk.estimator, rk.table_size,
                                              rk.neighbours, tuple(rk.ease_lambdas),
                                              config.train.eval_k, config.train.eval_seed)
            seconds = time.perf_counter() - started
            item_table.DENSE_ROWS_DENSITY, item_table.table_from_baskets = density, fit
            figures.append((tuning["hr@10"], tuning["ndcg@10"]))
            print(f"{name:<42}{round_:>6}{seconds:>9.1f}{tuning['chosen']:>10g}", flush=True)
    same = all(f == figures[0] for f in figures)
    print("validation figures identical across the ways and rounds:", same)
    return 0 if same else 1


def scale_options(parser) -> None:
    parser.add_argument("--events-per-item", type=float, default=20.0)
    parser.add_argument("--cluster-size", type=int, default=100)
    parser.add_argument("--lam", type=float, default=20.0, help="EASE's λ")
    parser.add_argument("--table-size", type=int, default=100, help="M")
    parser.add_argument("--neighbours", type=int, default=100, help="C")
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        parser = argparse.ArgumentParser()
        scale_options(parser)
        args = parser.parse_args(argv[3:])
        print(json.dumps(scale_child(int(argv[1]), argv[2], args)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    acc = commands.add_parser("accuracy")
    acc.add_argument("--config", default="tfrec/configs/online_retail.yaml")
    acc.add_argument("--lam", type=float, default=20.0, help="EASE's λ")
    acc.add_argument("--variants", nargs="+",
                     default=["ease:100", "neighbourhood:100:100", "neighbourhood:100:200",
                              "neighbourhood:50:200", "neighbourhood:200:400"])
    sc = commands.add_parser("scale")
    sc.add_argument("--items", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    sc.add_argument("--dense-max", type=int, default=20_000)
    scale_options(sc)
    lay = commands.add_parser("layer")
    lay.add_argument("--items", type=int, default=100_000)
    lay.add_argument("--table-size", type=int, default=100)
    lay.add_argument("--batch", type=int, default=32)
    lay.add_argument("--length", type=int, default=50)
    lay.add_argument("--repeats", type=int, default=20)
    grd = commands.add_parser("grid")
    grd.add_argument("--config", default="tfrec/configs/online_retail.yaml")
    grd.add_argument("--rounds", type=int, default=2, help="turns of the three ways")
    rec = commands.add_parser("recency")
    rec.add_argument("--config", default="tfrec/configs/online_retail.yaml")
    rec.add_argument("--set", action="append", default=[], help="KEY=VALUE run config override")
    rec.add_argument("--half-lives", type=float, nargs="+", default=[60.0, 120.0, 365.0])
    rec.add_argument("--lams", type=float, nargs="+", default=[20.0, 50.0])
    args = parser.parse_args(argv)
    if args.command == "recency":
        return recency(args)
    if args.command == "grid":
        return grid(args)
    if args.command == "layer":
        return layer(args)
    if args.command == "accuracy":
        return accuracy(args)
    args.forward = [f"--events-per-item={args.events_per_item}",
                    f"--cluster-size={args.cluster_size}", f"--lam={args.lam}",
                    f"--table-size={args.table_size}", f"--neighbours={args.neighbours}",
                    f"--cases={args.cases}", f"--seed={args.seed}"]
    return scale(args)


if __name__ == "__main__":
    raise SystemExit(main())
