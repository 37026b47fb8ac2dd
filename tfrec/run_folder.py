"""The run folder and the report folder: the one place that spells their files.

A run folder (what `tfrec train` writes, `--run`) holds::

  config.json        the resolved run config
  vocab.tsv          item vocabulary (index order, counts from the training slice)
  text_vocab.txt     token vocabulary of the text tower
  checkpoints/       tf.train.CheckpointManager, one checkpoint per finished epoch
  logs/              TensorBoard
  history.jsonl      one line of metrics per finished epoch
  eval.json          held-out hit rate after training
  evaluated_as.json  a final model's (`tfrec train --final-from`): the evaluated run it
                     repeats on every event, and that run's held-out headline
  ranking/           the ranking stage: item-item table, feature tables, ranker
  evaluation/        `tfrec evaluate`'s report folder (by default)
  baselines/<name>/  the run folders of the model's variants `tfrec evaluate` trains

A report folder (`tfrec evaluate --out`, `tfrec prepare --out`) holds
report.json, report.html, plots/, and for the data report the vocabulary
(vocab.tsv, as training writes it) and rejected_rows.csv.

No TensorFlow here: the checkpoints are read by `tfrec.run.load_run`.
"""

from __future__ import annotations

import json
import re

from tfrec.config import RunConfig, from_dict
from tfrec.errors import InputError
from tfrec.utils import Entry, Folder, json_ready

VOCAB_FILE = "vocab.tsv"


class ReportFolder(Folder):
    """A report's folder: report.json, report.html, plots/ (and a data report's
    vocabulary and rejected rows)."""

    json_file = Entry("report.json")
    html_file = Entry("report.html")
    plots = Entry("plots")
    vocab_file = Entry(VOCAB_FILE)
    rejected_rows_file = Entry("rejected_rows.csv")


# Two Chinese or Japanese characters in a row (Han, Hiragana, Katakana): a token the
# first tokeniser rules made and the current ones never make.
_TWO_CJK = re.compile("[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
                      "\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]{2}")


class RunFolder(Folder):
    """A run folder: where each of its files lives, and reading and writing them."""

    config_file = Entry("config.json")
    vocab_file = Entry(VOCAB_FILE)
    text_vocab_file = Entry("text_vocab.txt")
    checkpoints = Entry("checkpoints")
    logs = Entry("logs")
    history_file = Entry("history.jsonl")
    eval_file = Entry("eval.json", "The held-out scores training writes after its last epoch.")
    ranking = Entry("ranking", "The ranking stage (`tfrec.ranking.stage.RankingStage`).")
    evaluated_as_file = Entry("evaluated_as.json", "A final model's: the evaluated run whose "
                                                   "settings it trained on every event.")
    provenance_file = Entry("provenance.json", "What each training of the run ran with: the "
                                               "package versions, the data read and its "
                                               "held-out cases' fingerprint.")

    @property
    def evaluation(self) -> ReportFolder:
        """`tfrec evaluate`'s report folder unless it is given another."""
        return ReportFolder(self.path / "evaluation")

    def variant(self, name: str) -> "RunFolder":
        """The run folder of a variant of this run (`tfrec evaluate` trains them)."""
        return RunFolder(self.path / "baselines" / name)

    def is_run(self) -> bool:
        """Does the folder hold a tfrec run (a `config.json` that reads as a run config,
        not any file of that name)?"""
        if not self.config_file.is_file():
            return False
        try:
            self.read_config()
        except (InputError, ValueError, TypeError, OSError):
            return False
        return True

    def read_config(self) -> RunConfig:
        """The config the run was trained with.

        Raises:
          InputError: not a run folder.
        """
        path = self.config_file
        if not path.exists():
            raise InputError(f"not a run folder (no {path.name})", path=str(self.path))
        saved = json.loads(path.read_text())
        ranking = saved.get("ranking") if isinstance(saved, dict) else None
        if isinstance(ranking, dict) and "new_copies" not in ranking:
            # Saved before the setting existed: that run's ranker was fit without copies.
            ranking["new_copies"] = False
        model = saved.get("model") if isinstance(saved, dict) else None
        text = model.get("text") if isinstance(model, dict) else None
        if isinstance(text, dict) and "tokenizer_rules" not in text:
            # Saved before the setting: its vocabulary tells the rules it was learned with.
            text["tokenizer_rules"] = self._inferred_tokenizer_rules()
        if isinstance(ranking, dict) and "new_decoys" not in ranking:
            # Likewise without decoys (a final model or a resume refits as that run did).
            ranking["new_decoys"] = 0
        return from_dict(RunConfig, saved, str(path))

    def _inferred_tokenizer_rules(self) -> int:
        """The tokeniser rules of a run saved before its config recorded them: the first
        (1) when its token vocabulary holds a word of two or more Chinese or Japanese
        characters, which the current rules (2) never make; else 2 (the release that
        brought them recorded nothing either, and on texts without such characters, or
        markup, the two read alike)."""
        vocabulary = self.read_text_vocabulary() or []
        return 1 if any(_TWO_CJK.search(token) for token in vocabulary) else 2

    def write_config(self, config: RunConfig) -> None:
        self.config_file.write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    def write_files(self, config: RunConfig, vocab, text_vocabulary: list[str]) -> None:
        """The config, the item vocabulary and the token vocabulary: what
        `tfrec.run.load_run` rebuilds the model from."""
        self.write_config(config)
        vocab.save(self.vocab_file)
        self.text_vocab_file.write_text("".join(t + "\n" for t in text_vocabulary),
                                        encoding="utf-8")

    def read_text_vocabulary(self) -> list[str] | None:
        """The text tower's tokens (None if the run has none)."""
        path = self.text_vocab_file
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else None

    def read_history(self) -> list[dict]:
        """One dict of metrics per finished epoch."""
        if not self.history_file.exists():
            return []
        return [json.loads(line) for line in self.history_file.read_text().splitlines()
                if line.strip()]

    def truncate_history(self, epochs: int) -> None:
        """Drops history lines past the restored epoch (an epoch killed after its line)."""
        if self.history_file.exists():
            lines = [line for line in self.history_file.read_text().splitlines()
                     if line.strip() and json.loads(line)["epoch"] <= epochs]
            self.history_file.write_text("".join(line + "\n" for line in lines))

    def write_eval(self, evaluation: dict) -> None:
        self.eval_file.write_text(json.dumps(json_ready(evaluation), indent=2) + "\n")

    def read_eval(self) -> dict | None:
        """The held-out scores training wrote (None: the run has none)."""
        return json.loads(self.eval_file.read_text()) if self.eval_file.exists() else None

    def add_provenance(self, record: dict) -> None:
        """Appends a training's record to `provenance.json` ({"trainings": [...]})."""
        trainings = self.read_provenance()
        self.provenance_file.write_text(json.dumps(json_ready(
            {"trainings": trainings + [record]}), indent=2) + "\n")

    def read_provenance(self) -> list[dict]:
        """The records of the run's trainings, oldest first ([]: none, or an unreadable
        file)."""
        try:
            return list(json.loads(self.provenance_file.read_text())["trainings"])
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def write_evaluated_as(self, evaluated_as: dict) -> None:
        self.evaluated_as_file.write_text(json.dumps(json_ready(evaluated_as), indent=2) + "\n")

    def read_evaluated_as(self) -> dict | None:
        """A final model's record of the run it was evaluated as (None: not a final model)."""
        path = self.evaluated_as_file
        return json.loads(path.read_text()) if path.exists() else None
