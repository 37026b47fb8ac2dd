"""Event weights under an objective that does not read them: one warning, naming them."""

import logging

import pytest

from tfrec.run import load_run_config
from tfrec.training import _WARNED, check_run_config, ignored_settings


@pytest.fixture(autouse=True)
def fresh_warnings():
    _WARNED.clear()
    yield
    _WARNED.clear()


def config(*settings):
    return load_run_config(None, list(settings))


def test_event_weights_under_retrieval_are_warned_about_once(caplog):
    run = config("model.objective=retrieval", "data.pairs.event_weights.book=5")
    with caplog.at_level(logging.WARNING, logger="tfrec.training"):
        check_run_config(run)
        check_run_config(run)
    [record] = [r for r in caplog.records if "event_weights" in r.getMessage()]
    message = record.getMessage()
    assert "data.pairs.event_weights (book: 5) is set but does nothing" in message
    assert "model.objective 'retrieval'" in message and "'skipgram' and 'both'" in message


def test_the_other_weights_are_named_too():
    [message] = ignored_settings(config("data.pairs.default_event_weight=2",
                                        "data.pairs.conversion_weight=4"))
    assert message.startswith("data.pairs.default_event_weight (2) and "
                              "data.pairs.conversion_weight (4) are set but do nothing")


@pytest.mark.parametrize("settings", [
    [],  # the defaults
    ["data.pairs.event_weights.book=3"],  # a default value given again
    ['data.sessions.conversion_types=["buy"]'],  # a conversion type weighs as one by itself
    ["model.objective=skipgram", "data.pairs.event_weights.book=5"],
    ["model.objective=both", "data.pairs.event_weights.book=5"],
])
def test_no_warning_when_nothing_is_ignored(settings):
    assert ignored_settings(config(*settings)) == []


@pytest.mark.parametrize("settings, message", [
    (["model.recency_decay=0.5"], "model.recency_decay (0.5) is set but does nothing: "
                                  "model.pooling is 'mean'"),
    (["train.holdout_users=0.3"], "train.holdout_users (0.3) is set but does nothing: "
                                  "train.split_by is 'time'"),
    (["train.split_date=2024-05-01", "train.split_fraction=0.3"],
     "train.split_fraction (0.3) is set but does nothing: train.split_date (2024-05-01)"),
    (["ranking.enabled=false", "ranking.num_candidates=50", "ranking.members=2"],
     "ranking.num_candidates, ranking.members are set but do nothing: ranking.enabled is "
     "false"),
    (["train.split_by=user", "train.split_date=2011-01-01"],
     "train.split_date (2011-01-01) is set but does nothing: train.split_by is 'user'"),
    (["model.use_text=false", "model.text_share=0.3", "model.id_dropout=0.2"],
     "model.text_share (0.3), model.id_dropout (0.2) are set but do nothing: model.use_text "
     "is false"),
    (["model.use_text=false", "model.text.filters=8"],
     "model.text.filters is set but does nothing: model.use_text is false"),
    (["model.fusion=sum", "model.text_share=0.3"],
     "model.text_share (0.3) is set but does nothing: model.fusion is 'sum'"),
    (["model.num_sampled=100"],
     "model.num_sampled (100) is set but does nothing: model.negatives is 'in_batch'"),
    (["model.retrieval_weight=2"],
     "model.retrieval_weight (2) is set but does nothing: model.objective is 'retrieval'"),
    (["ranking.estimator=ease", "ranking.neighbours=10"],
     "ranking.neighbours (10) is set but does nothing: ranking.estimator is 'ease'"),
    (["ranking.ease_lambda=7", "ranking.ease_lambdas=[1,2]"],
     "ranking.ease_lambdas ([1, 2]) is set but does nothing: ranking.ease_lambda (7) is set"),
    (["model.use_text=false", "train.cold_items=0.3"],
     "train.cold_items (0.3) holds items out of training as new ones, but model.use_text is "
     "false"),
])
def test_a_setting_of_a_mode_not_chosen_is_named(settings, message):
    [said] = ignored_settings(config(*settings))
    assert said.startswith(message)


def test_the_bundled_and_example_configs_set_nothing_unread():
    from pathlib import Path

    import tfrec

    root = Path(tfrec.__file__).parent
    paths = [*(root / "configs").glob("*.yaml"), *(root.parent / "examples").glob("*.yaml")]
    assert len(paths) >= 2
    for path in paths:
        assert ignored_settings(load_run_config(str(path))) == [], path
    assert ignored_settings(config("model.pooling=recency", "model.recency_decay=0.5")) == []
    for read in (["model.negatives=mixed", "model.num_sampled=100"],
                 ["model.objective=both", "model.retrieval_weight=2"],
                 ["ranking.estimator=neighbourhood", "ranking.neighbours=10"],
                 ["model.text_share=0.3"], ["model.use_text=false"]):
        assert ignored_settings(config(*read)) == [], read


def test_a_config_tfrec_derives_from_a_run_is_not_warned_about(caplog):
    """The evaluation's text-off variant sets model.use_text false (and id_dropout 0): its
    unread text settings are by design, not the user's."""
    from tfrec.evaluate.methods import REGISTRY
    from tfrec.training import settings_warnings_held

    run = config("train.seed=3")
    variant = REGISTRY["tfrec_text_off"]._variant(
        type("Run", (), {"config": run})())
    assert ignored_settings(variant)  # unread by design
    with caplog.at_level(logging.WARNING, logger="tfrec.training"):
        with settings_warnings_held():
            check_run_config(variant)
        assert not caplog.records
        check_run_config(variant)  # outside, as for any config
    assert any("does nothing" in r.getMessage() for r in caplog.records)
