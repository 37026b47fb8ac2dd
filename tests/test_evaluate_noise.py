"""The paired bootstrap behind the bar's intervals (`tfrec.evaluate.noise`)."""

import numpy as np
import pytest

from tfrec.evaluate import noise
from tfrec.evaluate.bar import check_bar, noise_text, verdict
from tfrec.evaluate.noise import paired_interval, per_case


def test_per_case_values_are_the_metrics_case_by_case():
    ranks = np.array([0, 3, 9, 10, 500])
    assert per_case(ranks, "hr@10").tolist() == [1, 1, 1, 0, 0]
    assert per_case(ranks, "ndcg@10") == pytest.approx(
        [1.0, 1 / np.log2(5), 1 / np.log2(11), 0.0, 0.0])
    assert per_case(ranks, "hr@10").mean() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="unknown metric"):
        per_case(ranks, "map@10")


def test_a_clear_gap_is_above_zero_and_equal_methods_hold_it():
    rng = np.random.default_rng(0)
    b = (rng.random(2000) < 0.3).astype(float)
    better = np.maximum(b, rng.random(2000) < 0.2)  # +0.14 or so, case by case
    up = paired_interval(better, b)
    assert up.difference == pytest.approx((better - b).mean())
    assert 0 < up.low < up.difference < up.high
    assert up.direction == "above" and up.users == 2000
    down = paired_interval(b, better)
    assert down.direction == "below" and down.high < 0
    same = paired_interval(b, b)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.direction == "within"
    # A small gap on few cases is not told from noise.
    small = b.copy()
    small[np.flatnonzero(b == 0)[:3]] = 1
    assert paired_interval(small[:300], b[:300]).direction == "within"


def test_cases_of_one_user_widen_the_interval():
    """Ten users of 100 cases each, each user all hits or all misses for one method:
    resampling cases treats 1,000 draws as independent, resampling users 10."""
    a = np.repeat([1, 0, 1, 0, 1, 1, 0, 1, 0, 1], 100).astype(float)
    b = np.full(1000, 0.5)
    users = np.repeat(np.arange(10), 100)
    by_case = paired_interval(a, b)
    by_user = paired_interval(a, b, users)
    assert by_user.difference == by_case.difference
    assert by_user.users == 10
    assert (by_user.high - by_user.low) > 3 * (by_case.high - by_case.low)


def test_the_draws_are_seeded_and_do_not_depend_on_the_chunk(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = (rng.random(500) < 0.4).astype(float), (rng.random(500) < 0.35).astype(float)
    users = rng.integers(0, 120, 500)
    first = paired_interval(a, b, users)
    assert paired_interval(a, b, users) == first
    monkeypatch.setattr(noise, "CHUNK_ELEMENTS", 7 * 120)  # 7 draws a chunk
    assert paired_interval(a, b, users) == first
    assert paired_interval(a, b, users, seed=5) != first


def test_bad_inputs_are_named():
    assert paired_interval(np.zeros(0), np.zeros(0)) is None
    with pytest.raises(ValueError, match="one shape"):
        paired_interval(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="2 users for 3 cases"):
        paired_interval(np.zeros(3), np.zeros(3), np.zeros(2))


def test_the_bar_carries_each_comparisons_interval():
    def method(a, w):
        return {"all": {"hr@10": a, "cases": 100}, "warm": {"hr@10": w, "cases": 90},
                "cold": {"hr@10": None, "cases": 10}}

    methods = {"tfrec": method(0.32, 0.33), "ease": method(0.31, 0.335)}
    asked = []

    def paired(a, b, group, metric):
        asked.append((a, b, group, metric))
        return noise.Interval(0.01, -0.004, 0.024, 50) if group == "all" else \
            noise.Interval(-0.005, -0.02, -0.001, 50)

    checks = {c["check"]: c for c in check_bar(methods, 10, None, paired=paired)}
    assert ("tfrec", "ease", "all", "hr@10") in asked
    every = checks["beats every baseline on all cases"]
    assert every["met"] is True
    assert every["noise"] == {"difference": 0.01, "interval95": [-0.004, 0.024],
                              "users": 50, "direction": "within"}
    assert verdict(every) == "met, within noise"
    assert noise_text(every) == ("difference +0.0100 (95% interval -0.0040 to +0.0240, "
                                 "50 users resampled)")
    warm = checks["matches or beats EASE on warm targets"]
    assert warm["met"] is False and verdict(warm) == "NOT met"
    # Without intervals the bar is as before.
    plain = check_bar(methods, 10, None)
    assert all("noise" not in c for c in plain)
    assert verdict(plain[0]) == "met" and noise_text(plain[0]) == ""
