"""`RankingConfig`: the settings of the ranking stage (keys under `ranking.`)."""

from __future__ import annotations

import dataclasses

from tfrec.errors import InputError


@dataclasses.dataclass(frozen=True)
class RankingConfig:
    """Settings of the two-stage ranker.

    Defaults were chosen on the ranker's validation cases (a share of the
    ranker's own sessions, never the test cases) on Online Retail and
    goodbooks-10k; bench/RESULTS.md, "Two-stage ranking study", has the
    figures. Validation did not separate N = 50..300 on Online Retail (N=100
    on goodbooks); 200 keeps the candidate recall up (0.68 / 0.52 against
    0.59 / 0.42 at 100). 8 cases per session scored as 4. M = 200 co-items
    per item: "only the table" then ranks as full EASE does.

    Attributes:
      ranker_share: share of the run's training period kept out of stage 1
        (the two-tower and the item-item table that make the ranker's
        features): the last share of the training events by time for a
        time split, a seeded share of the training users for the user split.
        Its sessions are the ranker's training cases.
      cases_per_session: up to this many ranker cases per session (user),
        each hiding another of its items.
      new_share: share of the ranker's training cases whose (warm) target is
        shown as an item without behaviour (see
        `tfrec.ranking.features.present_as_new`): new items are rare among
        the ranker's targets and common in a catalogue.
      validation_share: share of the ranker's cases held out to choose N, M
        and the ranker's settings.
      num_candidates: N, the width of a query's candidate list: the
        two-tower's top items and the table's top items, deduplicated.
      table_share: the share of the N slots the item-item table fills first
        (its top items for the query); the two-tower fills the rest.
      neighbours: M, the co-items per item kept in the item-item table.
      ease_lambda: the L2 weight of the EASE fit behind the table.
      hidden_units: widths of the ranker's hidden layers.
      epochs: passes of the ranker's `fit` over its training cases.
      learning_rate: the ranker's Adam learning rate.
      batch_size: queries per ranker step.
      seed: seeds the split of the ranker's cases and the ranker's weights.
    """

    ranker_share: float = 0.12
    cases_per_session: int = 4
    new_share: float = 0.1
    validation_share: float = 0.2
    num_candidates: int = 200
    table_share: float = 0.5
    neighbours: int = 200
    ease_lambda: float = 100.0
    hidden_units: tuple[int, ...] = (64, 32)
    epochs: int = 20
    learning_rate: float = 0.003
    batch_size: int = 64
    seed: int = 42

    def __post_init__(self):
        if not 0.0 < self.ranker_share < 1.0:
            raise InputError(f"must be between 0 and 1 (exclusive), got {self.ranker_share}",
                             key="ranking.ranker_share")
        if not 0.0 <= self.validation_share < 1.0:
            raise InputError(f"must be in [0, 1), got {self.validation_share}",
                             key="ranking.validation_share")
        if self.cases_per_session < 1:
            raise InputError(f"must be at least 1, got {self.cases_per_session}",
                             key="ranking.cases_per_session")
        if not 0.0 <= self.new_share < 1.0:
            raise InputError(f"must be in [0, 1), got {self.new_share}",
                             key="ranking.new_share")
        if self.num_candidates < 1:
            raise InputError(f"must be at least 1, got {self.num_candidates}",
                             key="ranking.num_candidates")
        if not 0.0 <= self.table_share <= 1.0:
            raise InputError(f"must be in [0, 1], got {self.table_share}",
                             key="ranking.table_share")
        if self.neighbours < 1:
            raise InputError(f"must be at least 1, got {self.neighbours}",
                             key="ranking.neighbours")
        if self.ease_lambda <= 0:
            raise InputError(f"must be positive, got {self.ease_lambda}",
                             key="ranking.ease_lambda")
        if not self.hidden_units or any(int(u) < 1 for u in self.hidden_units):
            raise InputError(f"needs one or more positive widths, got {self.hidden_units}",
                             key="ranking.hidden_units")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise InputError(f"must be at least 1, got {getattr(self, key)}",
                                 key=f"ranking.{key}")
        if self.learning_rate <= 0:
            raise InputError(f"must be positive, got {self.learning_rate}",
                             key="ranking.learning_rate")

    def check_k(self, k: int) -> None:
        """Refuses a candidate list shorter than the K the ranking is scored at."""
        if self.num_candidates < k:
            raise InputError(f"the candidate list ({self.num_candidates}) must hold at least "
                             f"k = {k} items", key="ranking.num_candidates")
