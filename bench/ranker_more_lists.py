"""Does the ranker gain from more lists? Its fit lists alone against its fit lists plus
half of its validation lists, measured on the other half (two folds, whole sessions
on each side), on a trained run's cached lists (`bench/ranker_variants.py --cache`).

    TFREC_DATA=/work/shared/data PYTHONPATH=. python bench/ranker_more_lists.py \\
        --cache or-s43.pkl --seeds 43,44

Also prints, for information, the held-out cases' HR@10 (all, warm, cold) of the
ranker fit on the fit lists and of the one fit on every list (fit and validation):
what `tfrec train` would serve if it refit its ranker on all its lists.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
from tfrec.metrics import score_cases  # noqa: I100
from tfrec.ranking.protocol import ranker_cases
from tfrec.ranking.ranker import fit_ranker, list_ranks, score_lists
from tfrec.ranking.stage import stage1_training_data
from tfrec.run import prepare_training_data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="a bench/ranker_variants.py cache")
    parser.add_argument("--seeds", default="42", help="comma list of ranker seeds")
    args = parser.parse_args(argv)
    with Path(args.cache).open("rb") as f:
        config, lists, (cases, cands, mask, feats) = pickle.load(f)
    data = prepare_training_data(config)
    _, split = stage1_training_data(config, data)
    rk, k = config.ranking, config.train.eval_k
    made, groups = ranker_cases(split.ranker, data.vocab, config, split.per_user,
                                config.train.eval_seed, rk.cases_per_session)
    if not np.array_equal(made.targets, lists.targets):
        raise SystemExit("the run's ranker cases are not the cached lists' cases")
    val = lists.validation_rows
    sessions = np.unique(groups[val])
    half = np.random.default_rng(11).choice(sessions, len(sessions) // 2, replace=False)
    in_a = np.isin(groups[val], half)
    folds = (val[in_a], val[~in_a])
    miss = rk.num_candidates + 1

    def fit(rows, seed):
        return fit_ranker(lists.features[rows], lists.mask[rows], lists.labels[rows],
                          rk.hidden_units, rk.epochs, rk.learning_rate, rk.batch_size, seed,
                          members=rk.members)

    def hr(model, rows):
        scores = score_lists(model, lists.features[rows], lists.mask[rows])
        return float(np.mean(list_ranks(scores, lists.candidates[rows], lists.mask[rows],
                                        lists.targets[rows], miss) < k))

    def held_out(model):
        ranks = list_ranks(score_lists(model, feats, mask), cands, mask, cases.targets, miss)
        s = score_cases(ranks, cases, k)
        return " / ".join(f"{s[part][f'hr@{k}']:.4f}" for part in ("all", "warm", "cold"))

    print(f"{len(lists.fit_rows)} fit lists, validation halves {len(folds[0])} and "
          f"{len(folds[1])}")
    print(f"{'seed':<5} {'fit lists':>10} {'+ half':>8} {'held out: fit lists':>26} "
          f"{'every list':>26}")
    for seed in (int(s) for s in args.seeds.split(",")):
        base = fit(lists.fit_rows, seed)
        alone = np.mean([hr(base, fold) for fold in folds])
        more = np.mean([hr(fit(np.concatenate([lists.fit_rows, other]), seed), fold)
                        for fold, other in (folds, folds[::-1])])
        every = fit(np.concatenate([lists.fit_rows, val]), seed)
        print(f"{seed:<5} {alone:10.4f} {more:8.4f} {held_out(base):>26} "
              f"{held_out(every):>26}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
