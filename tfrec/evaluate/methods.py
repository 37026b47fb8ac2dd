"""The methods `tfrec evaluate` compares: the model and a registry of baselines.

A baseline is an object with its name, its label, how it is fit on the
run's data (`fit`: the training sessions and vocabulary, a validation slice
of them when it tunes a setting, never the held-out cases) and how it ranks
the held-out cases (`rank`). `tfrec evaluate` runs the requested ones in
turn; adding a baseline is one class here, registered with `register`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tfrec.config import EvaluateSettings
from tfrec.evaluate import baselines as baselines_lib
from tfrec.metrics import rank_targets, target_ranks
from tfrec.run_folder import RunFolder

logger = logging.getLogger(__name__)

MODEL = "tfrec"
MODEL_LABEL = "tfrec (full model)"
# A run with a ranking stage: the model's row is both stages; these rows are
# stage 1 alone and the ranker refitted without each feature group.
TWO_STAGE_LABEL = "tfrec (both stages)"
STAGE1 = "tfrec_stage1"
STAGE1_LABEL = "tfrec stage 1 alone"
# An exported two-stage version: its serving_default's top K on the cases (both stages
# as served: the ScaNN index's candidates, the graph's features and ranker).
SERVED = "tfrec_served"
SERVED_LABEL = "tfrec as served (the export's serving_default)"
ABLATION_PREFIX = "tfrec_without_"
# The HR@K curves (and the largest k asked for) go up to this K.
MAX_K = 50


@dataclasses.dataclass
class BaselineSettings:
    """Settings of particular baselines (`tfrec evaluate`'s options)."""

    gensim_epochs: int = EvaluateSettings.gensim_epochs
    gensim_dim: int = EvaluateSettings.gensim_dim
    max_item_item_catalogue: int = EvaluateSettings.max_item_item_catalogue


@dataclasses.dataclass
class EvaluationRun:
    """What a baseline is fit on and scored against: the run, its data and the cases.

    Attributes:
      run_dir: the run folder (variants of the model are trained below it).
      config: the run's config.
      data: the run's `TrainingData` (its training sessions, vocabulary, cases).
      k: the K of the table.
      settings: the baselines' settings.
      progress: reports a step of work in words.
    """

    run_dir: Path
    config: Any
    data: Any
    k: int
    settings: BaselineSettings = dataclasses.field(default_factory=BaselineSettings)
    progress: Callable[[str], Any] = lambda text: None
    # What one baseline's fit found that another may reuse (EASE's choice of λ).
    shared: dict = dataclasses.field(default_factory=dict)

    @property
    def vocab(self):
        return self.data.vocab

    @property
    def cases(self):
        return self.data.cases


@dataclasses.dataclass
class Fitted:
    """A fitted baseline: what `rank` scores with, and how a setting was chosen (the
    validation figures of `baselines.tune`, shown in the report; None without one)."""

    model: Any
    tuning: dict | None = None


class Baseline:
    """A reference method ranked on the same cases as the model.

    Subclasses set `name` and `label` and implement `fit` and `rank`.

    Attributes:
      name: its key (`evaluate.baselines`, the report).
      label: its name in the table and the report.
      text_only: it sees item text and no behaviour (the cold-start claims
        compare the model with the best of these).
    """

    name: str = ""
    label: str = ""
    text_only: bool = False

    def skip_reason(self, run: EvaluationRun) -> str | None:
        """Why it does not run on this run (None: it does)."""
        return None

    def describe(self, run: EvaluationRun) -> str:
        """The progress line of its fit."""
        return self.label

    def fit(self, run: EvaluationRun) -> Fitted:
        raise NotImplementedError

    def rank(self, fitted: Fitted, run: EvaluationRun) -> np.ndarray:
        """[cases] rank of each case's target (0 = first), the query's own items excluded."""
        raise NotImplementedError


REGISTRY: dict[str, Baseline] = {}


def register(baseline: Baseline) -> Baseline:
    """Adds a baseline to the registry (its name must be new)."""
    if not baseline.name or is_model_row(baseline.name) or baseline.name in REGISTRY:
        raise ValueError(f"baseline name {baseline.name!r} is empty or taken")
    REGISTRY[baseline.name] = baseline
    return baseline


def baseline_names() -> tuple[str, ...]:
    """Every registered baseline, in registration order."""
    return tuple(REGISTRY)


def text_only_names() -> tuple[str, ...]:
    return tuple(name for name, b in REGISTRY.items() if b.text_only)


def label_of(name: str) -> str:
    """The label of a method (the model or a baseline; unknown names as they are)."""
    if name == MODEL:
        return MODEL_LABEL
    if name == STAGE1:
        return STAGE1_LABEL
    if name == SERVED:
        return SERVED_LABEL
    if name.startswith(ABLATION_PREFIX):
        return f"tfrec w/o {name[len(ABLATION_PREFIX):]}"
    return REGISTRY[name].label if name in REGISTRY else name


def ablation_name(group: str) -> str:
    """The row of the ranker refitted without feature group `group`."""
    return ABLATION_PREFIX + group


def is_model_row(name: str) -> bool:
    """The model or one of its stage rows (stage 1 alone, an ablation): not a baseline."""
    return name in (MODEL, STAGE1, SERVED) or name.startswith(ABLATION_PREFIX)


# Baselines that give a vector per item and per query -----------------------------------------

class EmbeddingBaseline(Baseline):
    """A baseline whose fit gives `baselines.Embeddings`: an item vector each and a query
    vector per case, ranked by dot product exactly as the model is."""

    def rank(self, fitted: Fitted, run: EvaluationRun) -> np.ndarray:
        valid = np.ones(run.vocab.size, dtype=bool)
        valid[0] = False
        emb = fitted.model
        return target_ranks(emb.queries, emb.items, run.cases.targets, run.cases.queries, valid)


class Popularity(EmbeddingBaseline):
    name, label = "popularity", "popularity"

    def fit(self, run: EvaluationRun) -> Fitted:
        return Fitted(baselines_lib.popularity(run.vocab, run.cases.queries))


class Item2VecGensim(EmbeddingBaseline):
    name, label = "item2vec_gensim", "item2vec (gensim)"

    def describe(self, run: EvaluationRun) -> str:
        return (f"{self.label}: Word2Vec skip-gram, {run.settings.gensim_epochs} epochs, "
                f"dim {run.settings.gensim_dim}")

    def fit(self, run: EvaluationRun) -> Fitted:
        return Fitted(baselines_lib.item2vec_gensim(
            run.data.sessions, run.vocab, run.cases.queries, dim=run.settings.gensim_dim,
            epochs=run.settings.gensim_epochs, seed=run.config.train.seed))


class TfidfText(EmbeddingBaseline):
    name, label, text_only = "tfidf_text", "text only (TF-IDF)", True

    def fit(self, run: EvaluationRun) -> Fitted:
        return Fitted(baselines_lib.tfidf(run.vocab, run.cases.queries))


class ItemItem(EmbeddingBaseline):
    """EASE / ItemKNN: an n x n matrix, so only up to a catalogue size; the setting is
    chosen on a validation slice of the training sessions."""

    fit_function: Callable

    def skip_reason(self, run: EvaluationRun) -> str | None:
        return baselines_lib.item_item_skip_reason(run.vocab.size - 1,
                                                   run.settings.max_item_item_catalogue)

    def describe(self, run: EvaluationRun) -> str:
        return (f"{self.label}: choosing its setting on a validation slice of the training "
                "sessions, then fitting on all of them")

    def fit(self, run: EvaluationRun) -> Fitted:
        emb = self.fit_function(run.data.sessions, run.vocab, run.cases.queries,
                                k=run.k, seed=run.config.train.seed,
                                max_items=run.settings.max_item_item_catalogue)
        return Fitted(emb, emb.tuning)


class Ease(ItemItem):
    name, label = "ease", "EASE"
    fit_function = staticmethod(baselines_lib.ease)

    def fit(self, run: EvaluationRun) -> Fitted:
        fitted = super().fit(run)
        run.shared["ease_tuning"] = fitted.tuning
        return fitted


class ItemKnn(ItemItem):
    name, label = "itemknn", "ItemKNN (cosine)"
    fit_function = staticmethod(baselines_lib.itemknn)


class EaseTfidf(ItemItem):
    """EASE, and items without training events by their text (`baselines.ease_tfidf`): the
    hybrid a team could build from the two baselines."""

    name, label = "ease_tfidf", "EASE + TF-IDF for new"

    def fit(self, run: EvaluationRun) -> Fitted:
        # EASE's λ as the `ease` row chose it on the same slice, when it ran.
        chosen = run.shared.get("ease_tuning")
        hybrid = baselines_lib.ease_tfidf(
            run.data.sessions, run.vocab, run.cases.queries,
            lam=None if chosen is None else chosen["chosen"], k=run.k,
            seed=run.config.train.seed, max_items=run.settings.max_item_item_catalogue)
        return Fitted(hybrid, hybrid.tuning)

    def rank(self, fitted: Fitted, run: EvaluationRun) -> np.ndarray:
        valid = np.ones(run.vocab.size, dtype=bool)
        valid[0] = False
        hybrid = fitted.model
        return target_ranks(hybrid.queries, hybrid.items, run.cases.targets,
                            run.cases.queries, valid, extra_scores=hybrid.extra_scores)


# Variants of the model ---------------------------------------------------------------------

class ModelVariant(Baseline):
    """The run's own config with a tower off, trained once under RUN_DIR/baselines/<name>/
    (reused while its config is the same)."""

    overrides: dict = {}

    def _variant(self, run: EvaluationRun):
        model_config = dataclasses.replace(run.config.model, **self.overrides)
        train_config = run.config.train
        if train_config.strategy == "multi_worker":
            # A variant trains here, in this one process, not on the run's cluster.
            train_config = dataclasses.replace(train_config, strategy="default")
        # A variant is a two-tower alone (the config its folder saves says so).
        ranking = dataclasses.replace(run.config.ranking, enabled=False)
        return dataclasses.replace(run.config, model=model_config, train=train_config,
                                   ranking=ranking)

    def _reusable(self, run: EvaluationRun) -> bool:
        """Whether the variant's folder holds this variant, trained to its last epoch (one
        cut short, by an evaluate stopped midway, is trained again)."""
        folder = RunFolder(run.run_dir).variant(self.name)
        if not folder.checkpoints.exists():
            return False
        try:
            saved = json.loads(folder.config_file.read_text())
            history = folder.read_history()
        except (OSError, ValueError):
            return False
        variant = self._variant(run)
        return (saved == json.loads(json.dumps(variant.to_dict()))
                and len(history) >= variant.train.epochs)

    def describe(self, run: EvaluationRun) -> str:
        folder = RunFolder(run.run_dir).variant(self.name).path
        if self._reusable(run):
            return f"{self.label}: reusing {folder}"
        return f"{self.label}: training ({run.config.train.epochs} epochs) in {folder}"

    def fit(self, run: EvaluationRun) -> Fitted:
        import tfrec.training as training
        from tfrec.run import load_run

        folder = RunFolder(run.run_dir).variant(self.name)
        # Two evaluates of one run at once train the variant once: the second waits, then
        # reuses it (they trained it into one folder side by side, each epoch twice).
        with self._held(folder.path):
            if self._reusable(run):
                return Fitted(load_run(folder.path)[2])
            if folder.path.exists():
                shutil.rmtree(folder.path)
            # The variant reads fewer settings than the run by design: no warning of them.
            with training.settings_warnings_held():
                return Fitted(training.train(self._variant(run), folder.path,
                                             verbose=0).model)

    @contextlib.contextmanager
    def _held(self, path: Path):
        """The variant's folder locked for this process (a lock file beside it); another
        evaluate training it is waited for, and said so."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("%s: another tfrec evaluate is training it in %s: waiting for it",
                            self.label, path)
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:  # a file system without locks: as before, unguarded
                pass
            yield
        finally:
            os.close(handle)

    def rank(self, fitted: Fitted, run: EvaluationRun) -> np.ndarray:
        ranks, _, _ = rank_targets(fitted.model, run.cases.queries, run.cases.targets,
                                   run.config.model.history_length)
        return ranks


class TextOff(ModelVariant):
    name, label = "tfrec_text_off", "tfrec, text tower off"
    overrides = {"use_text": False, "id_dropout": 0.0}


class IdOff(ModelVariant):
    name, label, text_only = "tfrec_id_off", "tfrec, id tower off", True
    overrides = {"use_ids": False, "id_dropout": 0.0}


for _baseline in (Popularity(), Item2VecGensim(), TfidfText(), Ease(), ItemKnn(), EaseTfidf(),
                  TextOff(), IdOff()):
    register(_baseline)
