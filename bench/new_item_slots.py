"""Candidate recall of a run's merged candidate lists when the two-tower's first C items
without behaviour move to the front of its list (`ranking.new_item_share`), per target
group (all / warm / cold), on the run's held-out cases.

    TFREC_DATA=../shared/data PYTHONPATH=. python bench/new_item_slots.py --run runs/or-s42

Prints, for each C, HR@N of the merged list (N = the run's num_candidates) and HR@100 of
its first 100 slots. The run's saved ranking stage gives the tables; nothing is refitted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import tfrec  # noqa: F401  (first: it sets up tf.keras before TensorFlow is imported)
from tfrec.metrics import rank_targets  # noqa: I100
from tfrec.ranking import features as F
from tfrec.ranking.stage import RankingStage
from tfrec.run import load_run, prepare_training_data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder trained with both stages")
    parser.add_argument("--moved", default="0,5,10,20,40", help="values of C, comma-separated")
    args = parser.parse_args(argv)
    run = Path(args.run)
    config, _, model, _ = load_run(run)
    cases = prepare_training_data(config).cases
    _, items, queries = rank_targets(model, cases.queries, cases.targets,
                                     config.model.history_length)
    stage = RankingStage.load(run / "ranking", items)
    new = stage.tables.counts == 0
    print(f"items without behaviour: {int(new[1:].sum())} of {len(new) - 1}; "
          f"N = {stage.num_candidates}, table share {stage.table_share}")
    groups = {"all": np.ones(len(cases.targets), bool), "warm": ~np.asarray(cases.cold),
              "cold": np.asarray(cases.cold)}
    width = stage.num_candidates
    for moved in (int(v) for v in args.moved.split(",")):
        cands, mask, _, _ = F.candidates(queries, stage.tables, cases.queries, width,
                                         stage.table_share, new_slots=moved)
        hit = ((cands == cases.targets[:, None]) & mask)
        full, first = hit.any(axis=1), hit[:, :100].any(axis=1)
        print(f"C = {moved:3d}  " + "  ".join(
            f"{g} {full[m].mean():.4f} / {first[m].mean():.4f}"
            for g, m in groups.items() if m.any()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
