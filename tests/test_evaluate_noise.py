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
    for bad in ("map@10", "hr10", "hr@", "hr@x"):
        with pytest.raises(ValueError, match="unknown metric"):
            per_case(ranks, bad)


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
    """Thirty users of 100 cases each, each user all hits or all misses for one method:
    resampling cases treats 3,000 draws as independent, resampling users 30."""
    a = np.repeat(np.tile([1, 0, 1, 0, 1, 1, 0, 1, 0, 1], 3), 100).astype(float)
    b = np.full(3000, 0.5)
    users = np.repeat(np.arange(30), 100)
    by_case = paired_interval(a, b)
    by_user = paired_interval(a, b, users)
    assert by_user.difference == by_case.difference
    assert by_user.users == 30
    assert (by_user.high - by_user.low) > 3 * (by_case.high - by_case.low)


def test_too_few_users_give_no_interval():
    """One user's 60 cases: every draw has the same mean, a zero-width interval that
    would read as certain; under MIN_USERS there is no interval at all."""
    rng = np.random.default_rng(2)
    a, b = (rng.random(60) < 0.5).astype(float), (rng.random(60) < 0.3).astype(float)
    one = paired_interval(a, b, np.zeros(60))
    assert one.users == 1 and one.low is None and one.high is None
    assert one.difference == pytest.approx((a - b).mean())
    assert one.direction == "unknown"
    assert one.as_dict()["interval95"] is None
    few = paired_interval(a, b, np.arange(60) % (noise.MIN_USERS - 1))
    assert few.direction == "unknown"
    enough = paired_interval(a, b, np.arange(60) % noise.MIN_USERS)
    assert enough.low is not None and enough.low < enough.high


def test_the_ratio_and_its_interval_come_from_the_same_draws():
    rng = np.random.default_rng(3)
    b = (rng.random(3000) < 0.3).astype(float)
    a = np.maximum(b, rng.random(3000) < 0.05)
    users = rng.integers(0, 900, 3000)
    got = paired_interval(a, b, users)
    assert got.ratio == pytest.approx(a.mean() / b.mean())
    assert 1.0 < got.ratio_low < got.ratio < got.ratio_high
    # The same draws: the ratio's bounds agree with the difference's in direction.
    assert (got.low > 0) == (got.ratio_low > 1)
    assert got.as_dict()["ratio_interval95"] == [got.ratio_low, got.ratio_high]
    zero = paired_interval(a, np.zeros(3000), users)
    assert zero.ratio is None and zero.ratio_low is None
    assert zero.as_dict()["ratio_interval95"] is None


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
    with pytest.raises(ValueError, match="finite: 1 are NaN"):
        paired_interval(np.array([0.0, np.nan, 1.0]), np.zeros(3))
    with pytest.raises(ValueError, match="finite: 2 are NaN"):
        paired_interval(np.array([0.0, np.inf, 1.0]), np.array([-np.inf, 0, 0]))
    for draws in (0, 1):
        with pytest.raises(ValueError, match="draws must be at least 2"):
            paired_interval(np.zeros(3), np.zeros(3), draws=draws)


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
                              "ratio": None, "ratio_interval95": None,
                              "users": 50, "direction": "within", "against": "ease"}
    assert every["ratio"] == pytest.approx(0.32 / 0.31)
    assert verdict(every) == "met, within noise"
    assert noise_text(every) == ("difference +0.0100 (95% interval -0.0040 to +0.0240, "
                                 "50 users resampled); 1.032x EASE")
    warm = checks["matches or beats EASE on warm targets"]
    assert warm["met"] is False and verdict(warm) == "NOT met"
    # Without intervals the bar is as before.
    plain = check_bar(methods, 10, None)
    assert all("noise" not in c for c in plain)
    assert verdict(plain[0]) == "met" and noise_text(plain[0]) == ""


def test_a_claim_over_several_baselines_holds_the_least_favourable_interval():
    """The best-scoring baseline need not be the one the model is least surely ahead
    of: the claim holds the interval of the lowest bound, naming its baseline."""
    def method(a):
        return {"all": {"hr@10": a, "cases": 500}, "warm": {"hr@10": a, "cases": 500},
                "cold": {"hr@10": None, "cases": 0}}

    methods = {"tfrec": method(0.34), "ease": method(0.33), "itemknn": method(0.32)}
    intervals = {"ease": noise.Interval(0.01, 0.004, 0.016, 300, 1.03, 1.01, 1.05),
                 "itemknn": noise.Interval(0.02, -0.01, 0.05, 300, 1.06, 0.97, 1.16)}

    def paired(a, b, group, metric):
        return intervals.get(b)

    every = check_bar(methods, 10, None, paired=paired)[0]
    assert every["best_baseline"] == "ease" and every["baseline"] == 0.33
    assert every["noise"]["against"] == "itemknn"
    assert every["noise"]["interval95"] == [-0.01, 0.05]
    assert verdict(every) == "met, within noise"
    # The ratio is to the best baseline; its interval only when the interval is its.
    assert every["ratio"] == pytest.approx(0.34 / 0.33) and "ratio_interval95" not in every
    assert noise_text(every) == ("difference against ItemKNN (cosine) +0.0200 (95% interval "
                                 "-0.0100 to +0.0500, 300 users resampled); 1.030x EASE")
    intervals["itemknn"] = noise.Interval(0.02, 0.01, 0.03, 300, 1.06, 1.03, 1.09)
    every = check_bar(methods, 10, None, paired=paired)[0]
    assert every["noise"]["against"] == "ease" and verdict(every) == "met"
    assert every["ratio_interval95"] == [1.01, 1.05]
    assert noise_text(every).endswith("; 1.030x EASE (95% interval 1.010x to 1.050x)")


def test_absolute_targets_and_too_few_users_in_the_bar():
    methods = {"tfrec": {"all": {"hr@10": 0.32, "cases": 100},
                         "warm": {"hr@10": 0.33, "cases": 90},
                         "cold": {"hr@10": None, "cases": 10}}}
    asked = []

    def paired(a, b, group, metric):
        asked.append(b)
        return noise.Interval(0.02, None, None, 12)

    check, = check_bar(methods, 10, {"all": 0.3}, paired=paired)
    assert asked == [0.3]
    assert check["met"] is True and check["noise"]["direction"] == "unknown"
    assert verdict(check) == "met, too few users to tell"
    assert noise_text(check) == (f"difference +0.0200 (no interval: 12 users, fewer than "
                                 f"{noise.MIN_USERS})")


def test_the_models_other_rows_are_measured_against_it():
    from tfrec.evaluate.runner import against_model
    from tfrec.evaluate.table import vs_model_lines

    def method(label):
        return {"label": label, "all": {"hr@10": 0.3, "cases": 100},
                "warm": {"hr@10": 0.3, "cases": 90}, "cold": {"hr@10": None, "cases": 0}}

    methods = {"tfrec": method("tfrec, both stages"), "tfrec_stage1": method("stage 1"),
               "tfrec_without_text": method("tfrec w/o text"), "ease": method("EASE")}
    asked = []

    def paired(a, b, group, metric):
        asked.append((a, b, group, metric))
        return noise.Interval(-0.01, -0.02, -0.001, 40)

    against_model(methods, paired, 10)
    assert "vs_model" not in methods["tfrec"] and "vs_model" not in methods["ease"]
    vs = methods["tfrec_without_text"]["vs_model"]
    assert set(vs) == {"all", "warm"}  # no cold cases
    assert vs["all"]["hr@10"]["interval95"] == [-0.02, -0.001]
    assert ("tfrec_without_text", "tfrec", "warm", "ndcg@10") in asked
    lines = vs_model_lines({"k": 10, "methods": methods})
    assert lines[1].strip().startswith("stage 1")
    assert "-0.0100 (-0.0200 to -0.0010) / -0.0100 (-0.0200 to -0.0010) / -" in lines[2]


def test_a_baseline_the_model_is_surely_behind_decides_a_claim_over_several():
    """EASE wholly above the model, ItemKNN's interval wide: the claim is surely not met,
    whatever the widest interval says."""
    def method(a):
        return {"all": {"hr@10": a, "cases": 500}, "warm": {"hr@10": a, "cases": 500},
                "cold": {"hr@10": None, "cases": 0}}

    methods = {"tfrec": method(0.30), "ease": method(0.33), "itemknn": method(0.29)}
    intervals = {"ease": noise.Interval(-0.03, -0.04, -0.02, 300),
                 "itemknn": noise.Interval(0.01, -0.05, 0.06, 300)}
    every = check_bar(methods, 10, None, paired=lambda a, b, g, m: intervals[b])[0]
    assert every["noise"]["against"] == "ease" and every["noise"]["direction"] == "below"
    assert verdict(every) == "NOT met"


def test_a_ratio_interval_keeps_the_draws_whose_baseline_has_no_hit():
    """The baseline's two hits are one user's of 40: in about a third of the draws it
    has none, an unbounded ratio at the top; they are kept, not dropped (which would
    pull both bounds down)."""
    users = np.repeat(np.arange(40), 5)
    a = np.zeros(200)
    a[::10] = 1  # 20 hits over 20 users
    b = np.zeros(200)
    b[:2] = 1  # user 0's two
    got = paired_interval(a, b, users)
    assert got.ratio == pytest.approx(10.0)
    assert got.ratio_high is None and got.ratio_low is not None and got.ratio_low > 1
    assert got.as_dict()["ratio_interval95"] == [got.ratio_low, None]
    check = {"check": "c", "best_baseline": "ease", "ratio": got.ratio,
             "ratio_interval95": [got.ratio_low, None], "noise": got.as_dict()}
    assert noise_text(check).endswith("to no upper bound)")
