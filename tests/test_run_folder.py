"""The folder owners: each file of a run, report, version or model folder is one entry."""

from pathlib import Path

from tfrec.exporter.layout import ModelFolder, VersionFolder
from tfrec.run_folder import ReportFolder, RunFolder


def test_an_entry_is_a_path_on_a_folder_and_names_its_file_on_the_class():
    run = RunFolder("runs/a")
    assert run.config_file == Path("runs/a/config.json")
    assert run.evaluation.html_file == Path("runs/a/evaluation/report.html")
    assert run.variant("no_text").vocab_file == Path("runs/a/baselines/no_text/vocab.tsv")
    assert ReportFolder.json_file.name == "report.json"
    assert ReportFolder.rejected_rows_file.name == "rejected_rows.csv"
    version = ModelFolder("models/m").version(3)
    assert version.number == 3
    assert version.metadata == Path("models/m/3/assets.extra/tfrec_metadata.json")
    assert version.user_histories == Path(
        "models/m/3/assets.extra/embeddings/user_histories.npy")
    assert version.items.parent == version.embeddings


def test_each_owner_shows_its_own_class_and_path():
    assert repr(RunFolder("r")) == "RunFolder('r')"
    assert repr(VersionFolder("m/1")) == "VersionFolder('m/1')"
    assert repr(ModelFolder(Path("m"))) == "ModelFolder('m')"


def test_scores_that_are_not_numbers_are_written_as_json_null(tmp_path):
    import json

    import numpy as np

    folder = RunFolder(tmp_path)
    cold = {"cases": 0, "hr@10": float("nan"), "ndcg@10": np.float32("nan")}
    folder.write_eval({"all": {"hr@10": 0.3}, "cold": cold, "ratio": [1.0, float("inf")]})
    text = folder.eval_file.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"all": {"hr@10": 0.3},
                                "cold": {"cases": 0, "hr@10": None, "ndcg@10": None},
                                "ratio": [1.0, None]}
