import numpy as np
import pandas as pd
import pytest

from tfrec.config import TrainConfig
from tfrec.data.split import fraction_cut, split_events, split_for_training
from tfrec.errors import InputError


def events_at(times):
    """One event per time, each its own user (no session ids)."""
    return pd.DataFrame({"user": [f"u{i}" for i in range(len(times))],
                         "item": "a", "time": np.asarray(times, dtype=np.int64),
                         "event": "click", "session": None})


def test_split_fraction_is_a_share_of_the_events_not_of_the_time_range():
    # 990 events in the first day, 10 spread over the following 99 days: a
    # split at 10% of the time range would hold out under 1% of the events.
    day = 86_400
    times = np.concatenate([np.linspace(0, day, 990), np.linspace(2 * day, 100 * day, 10)])
    train, test, cut = split_events(events_at(times), split_fraction=0.1)
    assert len(test) == 100 and len(train) == 900
    assert train["time"].max() < cut <= test["time"].min()  # still a split by time


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.15, 0.5])
def test_the_held_out_share_is_close_to_the_fraction(fraction):
    times = np.random.default_rng(3).exponential(1000.0, 5000).astype(np.int64)
    _, test, _ = split_events(events_at(times), split_fraction=fraction)
    assert abs(len(test) / 5000 - fraction) < 0.005


def test_a_shared_timestamp_stays_on_one_side_nearest_the_share():
    # 10 events, 4 of them at the last time: 30% asks for 3; of the cuts that
    # keep the tie together, holding out 4 is nearer 3 than holding out none.
    times = [1, 2, 3, 4, 5, 6, 9, 9, 9, 9]
    assert fraction_cut(np.array(times), 0.3) == 9
    assert fraction_cut(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 0.3) == 8
    assert fraction_cut(np.array([1, 2, 3]), 0.01) == 3  # at least one event held out


def test_every_event_at_one_time_has_nothing_to_train_on():
    with pytest.raises(InputError) as err:
        split_events(events_at([5, 5, 5]), split_fraction=0.1)
    # No fraction helps: the split by user does.
    assert err.value.key == "train.split_by"


def test_until_leaves_out_whole_sessions_from_the_date_before_the_split():
    day = 86_400
    start = int(pd.Timestamp("2024-01-01").value // 10**9)
    times = start + np.arange(100) * day // 2  # two events a day over 50 days
    events = events_at(times)
    # A session that starts the day before `until` and runs past it stays whole.
    events.loc[[37, 38, 39], "session"] = "s"
    cut = pd.Timestamp("2024-01-20")  # events 0-37 are before it
    split = split_for_training(events, None, TrainConfig(until="2024-01-20",
                                                         split_date="2024-01-10"))
    kept = pd.concat([split.train, split.test])
    assert set(kept.index) == set(range(37)) | {37, 38, 39}
    assert (split.test["time"] < int(cut.value // 10**9) + day).all()
    assert split.train["time"].max() < int(pd.Timestamp("2024-01-10").value // 10**9)
    # A split fraction is a share of what is left.
    split = split_for_training(events, None, TrainConfig(until="2024-01-20", split_fraction=0.25))
    assert len(split.test) == 10 and len(split.train) == 30
    # Without it, nothing is left out.
    assert len(split_for_training(events, None, TrainConfig(split_fraction=0.25)).train) == 75


@pytest.mark.parametrize("settings, key", [
    ({"until": "2024-01-05", "split_date": "2024-01-10"}, "train.split_date"),
    ({"until": "2023-01-01"}, "train.until"),
    ({"until": "soon"}, "train.until"),
    ({"until": "2024-01-20", "split_by": "user"}, "train.until"),
])
def test_bad_until_settings_are_refused_naming_the_setting(settings, key):
    start = int(pd.Timestamp("2024-01-01").value // 10**9)
    events = events_at(start + np.arange(100) * 43_200)
    with pytest.raises(InputError) as err:
        split_for_training(events, None, TrainConfig(**settings))
    assert err.value.key == key


def test_a_split_date_under_the_user_split_is_said_to_be_unused(caplog):
    import logging

    start = int(pd.Timestamp("2024-01-01").value // 10**9)
    events = events_at(start + np.arange(100) * 43_200)
    with caplog.at_level(logging.INFO, logger="tfrec.data.split"):
        split = split_for_training(events, None, TrainConfig(split_by="user",
                                                             split_date="2024-01-10",
                                                             holdout_users=0.2))
    # Every user is held out or not whatever the date: the date is named as unused.
    assert split.per_user and len(split.test) > 0
    assert ("train.split_date (2024-01-10) is not used under train.split_by: user"
            in caplog.text)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfrec.data.split"):
        split_for_training(events, None, TrainConfig(split_by="user", split_date=None))
    assert "split_date" not in caplog.text


# Day-first or month-first text is not guessed (10/05/2024 was read as October the fifth,
# 13/05/2024 as May the thirteenth).
@pytest.mark.parametrize("date", ["2024-02-30", "yesterday", "10/05/2024", "13/05/2024"])
def test_an_impossible_split_date_names_the_setting(date):
    with pytest.raises(InputError) as err:
        split_for_training(events_at([0, 86_400]), None, TrainConfig(split_date=date))
    assert err.value.key == "train.split_date" and f"cannot parse split date '{date}'" in str(
        err.value)


def test_a_split_date_is_iso_8601_with_a_time_and_zone_if_given():
    from tfrec.data.report import _moment
    from tfrec.data.split import parse_split_date

    noon = parse_split_date("2024-05-20T12:00")
    assert noon == parse_split_date("2024-05-20T14:00+02:00") == \
        parse_split_date("2024-05-20") + 12 * 3600
    assert _moment(noon) == "2024-05-20 12:00:00 UTC"
    assert _moment(parse_split_date("2024-05-20")) == "2024-05-20"


def test_a_split_that_holds_out_no_case_is_warned_about():
    from tfrec.data.split import Cases, Split
    from tfrec.training import no_cases_warning

    none = Cases([], np.zeros(0, np.int32), np.zeros(0, bool))
    empty = pd.DataFrame()
    # A date places the split (train.split_fraction then does nothing): only it is named.
    dated = no_cases_warning(Split(empty, empty, cut=5), none, "2030-01-01")
    assert dated.endswith("move train.split_date earlier")
    assert no_cases_warning(Split(empty, empty, cut=5), none).endswith(
        "raise train.split_fraction")
    assert "holdout_users" in no_cases_warning(Split(empty, empty, per_user=True), none)
    assert no_cases_warning(Split(empty, empty), none) is None  # a final model: no split
    some = Cases([[1]], np.ones(1, np.int32), np.zeros(1, bool))
    assert no_cases_warning(Split(empty, empty, cut=5), some) is None


def test_data_without_timestamps_under_a_time_split_is_told_to_split_by_user():
    """goodbooks-10k's layout has no times (every event at 0): the fraction cannot be
    moved to make a time split work, and the message said to."""
    with pytest.raises(InputError) as err:
        split_events(events_at([0, 0, 0, 0]), None, 0.15)
    assert err.value.key == "train.split_by"
    assert "every event has the same time (1970-01-01 00:00:00: data without timestamps" in str(
        err.value) and "train.split_by=user" in str(err.value)
