"""Training throughput: tfrec's behaviour tower against gensim Word2Vec, same corpus.

    python bench/train_throughput.py                       # 10M generated events
    python bench/train_throughput.py --events 1e6 --quick  # a quick look

One generated log (sessions over clustered items), split by time; the
training slice feeds, with the same settings (skip-gram, window, negatives,
dimension, epochs, subsampling):
  - gensim `Word2Vec` (sg=1, the reference item2vec), its worker threads =
    the cores;
  - tfrec's behaviour tower alone (text tower off, `skipgram` objective,
    Keras `fit` on the pair pipeline);
  - the full hybrid model (id + text tower), fewer steps, for its rate.
Throughput is training tokens (events) per second of training, so the two
are counted the same way; HR@10 of both on the same held-out cases (rest of
the session -> one hidden item, the query's own items excluded, whole
catalogue ranked) shows what the speed buys.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tfrec  # noqa: E402,F401
from tfrec.config import ModelConfig, PairConfig, SessionConfig, TextConfig  # noqa: E402
from tfrec.data.pipeline import PairPipeline  # noqa: E402
from tfrec.data.sessions import sessionize  # noqa: E402
from tfrec.data.synthetic import generate_events, generate_items  # noqa: E402
from tfrec.data.vocab import build_vocabulary  # noqa: E402
from tfrec.evaluate import baselines  # noqa: E402
from tfrec.metrics import hit_rate, target_ranks  # noqa: E402
from tfrec.data.split import make_cases, split_events  # noqa: E402


def hr_at_10(items: np.ndarray, queries: np.ndarray, cases) -> float:
    valid = np.ones(len(items), bool)
    valid[0] = False
    ranks = target_ranks(queries, items, cases.targets, cases.queries, valid)
    return hit_rate(ranks, 10)


def fit_tfrec(sessions, vocab, args, use_text: bool, steps: int | None, optimizer: str):
    from tfrec.models import build_model
    from tfrec.optimizers import build_optimizer

    config = ModelConfig(embedding_dim=args.dim, use_text=use_text, objective="skipgram",
                         text=TextConfig(token_dim=32, filters=32))
    model = build_model(config, vocab, seed=1)
    model.compile(optimizer=build_optimizer(optimizer, args.lr))
    pairs = PairPipeline(sessions, vocab, PairConfig(
        window=args.window, num_negatives=args.negatives, subsample=args.subsample,
        batch_size=args.batch, global_context=False, seed=1))
    dataset = pairs.as_dataset()
    if steps:
        dataset = dataset.take(steps)
    epochs = 1 if steps else args.epochs
    # One warm-up step so tracing is not counted.
    model.fit(pairs.as_dataset().take(1), epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(dataset, epochs=epochs, verbose=0)
    return model, time.perf_counter() - started, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=float, default=1e7)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--subsample", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--optimizers", default="adam,lazy_adam",
                        help="comma-separated train.optimizer values, one tfrec row each")
    parser.add_argument("--cases", type=int, default=5_000)
    parser.add_argument("--split-fraction", type=float, default=0.3,
                        help="hold out sessions starting in this last share of the time range")
    parser.add_argument("--hybrid-steps", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="skip the hybrid model")
    args = parser.parse_args()
    cores = os.cpu_count()

    t0 = time.perf_counter()
    events = generate_events(int(args.events), args.items, seed=7)
    train, test, _ = split_events(events, split_fraction=args.split_fraction)
    items = generate_items(args.items, seed=7)
    vocab = build_vocabulary(train, items)
    sessions = sessionize(train, vocab, SessionConfig())
    cases = make_cases(test, vocab, seed=0)
    keep = np.random.default_rng(0).permutation(len(cases))[:args.cases]
    cases.queries = [cases.queries[i] for i in keep]
    cases.targets, cases.cold = cases.targets[keep], cases.cold[keep]
    tokens = sessions.num_events
    print(f"corpus: {len(events):,} events generated, {tokens:,} training events in "
          f"{sessions.num_sessions:,} sessions, {vocab.size - 1:,} items; {len(cases):,} "
          f"held-out cases ({time.perf_counter() - t0:.0f}s to build); {cores} cores")
    print(f"settings: skip-gram, window {args.window}, {args.negatives} negatives, dim "
          f"{args.dim}, {args.epochs} epoch(s), subsample {args.subsample}")

    rows = []
    emb = baselines.item2vec_gensim(sessions, vocab, cases.queries, dim=args.dim,
                                    window=args.window, negatives=args.negatives,
                                    epochs=args.epochs, sample=args.subsample, workers=cores,
                                    seed=1)
    rows.append(("gensim Word2Vec (sg)", tokens * args.epochs / emb.seconds, emb.seconds,
                 hr_at_10(emb.items, emb.queries, cases)))
    print(f"  gensim done in {emb.seconds:.1f}s", flush=True)

    from tfrec.data.sequences import histories_from_lists

    for optimizer in args.optimizers.split(","):
        model, seconds, pairs = fit_tfrec(sessions, vocab, args, use_text=False, steps=None,
                                          optimizer=optimizer)
        queries = model.query_embeddings(histories_from_lists(cases.queries, 20))
        rows.append((f"tfrec behaviour tower, {optimizer}", tokens * args.epochs / seconds,
                     seconds, hr_at_10(model.item_embeddings(), queries, cases)))
        print(f"  tfrec behaviour tower ({optimizer}) done in {seconds:.1f}s", flush=True)

    if not args.quick:
        optimizer = args.optimizers.split(",")[-1]
        model, seconds, _ = fit_tfrec(sessions, vocab, args, use_text=True,
                                      steps=args.hybrid_steps, optimizer=optimizer)
        # Tokens that many steps cover: the share of an epoch's pairs they hold.
        pairs_total = pairs_per_epoch(pairs)
        covered = tokens * min(1.0, args.hybrid_steps * args.batch / pairs_total)
        rows.append((f"tfrec hybrid, {optimizer}, {args.hybrid_steps} steps",
                     covered / seconds, seconds, float("nan")))

    base = rows[0][1]
    print(f"\n{'method':<40}{'tokens/s':>12}{'vs gensim':>11}{'seconds':>9}{'HR@10':>8}")
    for name, rate, seconds, hr in rows:
        print(f"{name:<40}{rate:>12,.0f}{rate / base:>10.2f}x{seconds:>9.1f}"
              + (f"{hr:>8.4f}" if hr == hr else f"{'-':>8}"))


def pairs_per_epoch(pairs: PairPipeline) -> int:
    return sum(block["target"].size for block in pairs.epoch_blocks(0))


if __name__ == "__main__":
    main()
