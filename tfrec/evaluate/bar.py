"""The bar: the claims the full model must meet, each with the figures behind it."""

from __future__ import annotations

from tfrec.evaluate.methods import (MAX_K, MODEL, STAGE1, is_model_row, label_of,
                                    text_only_names)
from tfrec.evaluate.noise import MIN_USERS

# A check over fewer cases than this says "too few cases" instead of met or not:
# below it one case moves a hit rate by more than the margins the bar is about
# (on 10 cold cases, 0.0000 against 0.0000 would read as met).
MIN_CASES = 30


def metric_value(method: dict, group: str, metric: str) -> float | None:
    """A method's figure ("hr@10", "ndcg@10"; another HR@K from its hr_curve), or None;
    None too at a K beyond a method's candidate list (its HR@K curve stops before K: the
    two-stage rows' figures there are those at the list's end, not at K)."""
    entry = method[group]
    curve = entry.get("hr_curve")
    at = int(metric.split("@")[1]) if "@" in metric else 0
    if curve is not None and len(curve) < min(at, MAX_K):
        return None
    if metric in entry:
        return entry[metric]
    curve = curve or []
    return curve[at - 1] if metric.startswith("hr@") and 0 < at <= len(curve) else None


def check_bar(methods: dict, k: int, targets: dict | None, paired=None) -> list[dict]:
    """The claims the full model must meet, each with the figures behind it.

    The claims compare the model with the baselines that ran; `targets` (HR@k per
    group, given by the user) adds absolute ones. With a ranking stage the model
    is both stages (`methods[MODEL]`); its own other rows (stage 1 alone, the
    ablations) are not baselines, and one claim compares it with stage 1 alone.
    A claim at a K beyond the model's candidate list (its HR@K curve is shorter)
    is left out.

    A claim against a method that was not run (or a group without cases) is
    left out. A claim on a group of fewer than `MIN_CASES` cases is neither
    met nor missed: its "met" is None and "cases" says how many there were.

    `paired` (optional): paired(model, baseline, group, metric) -> the
    `noise.Interval` of their difference on the same cases (`baseline` a method's
    name, or a number: a target); each comparison then also holds it ("noise":
    the difference, its 95% interval with the users resampled, and whether the
    interval is above, below or holds 0). A claim over several baselines holds
    the interval that decides it ("against" names its baseline), whichever
    scored best: one wholly below 0 if any (the model surely behind that
    baseline), else the one of the lowest bound (above 0 only if every one is).
    "met" stays the point estimates' comparison; the interval says how sure it
    is. The claim of beating every baseline also gives the ratio to the best
    one, and its interval ("ratio").
    """
    hr, nd = f"hr@{k}", f"ndcg@{k}"
    full = methods[MODEL]
    others = {n: m for n, m in methods.items() if n != MODEL}
    checks = []

    def least_favourable(group, metric, names):
        """The model's interval against one of `names` that decides the claim: one wholly
        below 0 (the lowest upper bound) if any, for the model is then surely behind a
        baseline; else the lowest lower bound (above 0 only when every one is)."""
        found = [(n, paired(MODEL, n, group, metric)) for n in names]
        found = [(n, i) for n, i in found if i is not None]
        if not found:
            return None, None
        bounded = [(n, i) for n, i in found if i.low is not None]
        if len(bounded) < len(found):  # too few users: no interval for any
            return found[0]
        below = [(n, i) for n, i in bounded if i.high < 0]
        if below:
            return min(below, key=lambda f: (f[1].high, f[1].difference))
        return min(bounded, key=lambda f: (f[1].low, f[1].difference))

    def compare(check, group, metric, names, strict=False, ratio=False):
        model = metric_value(full, group, metric)
        names = [n for n in names if n in others
                 and metric_value(others[n], group, metric) is not None]
        if model is None or not names:
            return
        best = max(names, key=lambda n: metric_value(others[n], group, metric))
        baseline = metric_value(others[best], group, metric)
        entry = {"check": check, "metric": metric, "model": model, "best_baseline": best,
                 "baseline": baseline, "met": model > baseline if strict else model >= baseline}
        if ratio and baseline > 0:
            entry["ratio"] = model / baseline
        if paired is not None:
            against, interval = least_favourable(group, metric, names)
            if interval is not None:
                entry["noise"] = {**interval.as_dict(), "against": against}
                if ratio and against == best and interval.ratio_low is not None:
                    entry["ratio_interval95"] = [interval.ratio_low, interval.ratio_high]
        checks.append(_judged(full, group, entry))

    baselines = [n for n in others if not is_model_row(n)]
    compare("beats every baseline on all cases", "all", hr, baselines, strict=True, ratio=True)
    text_only = text_only_names()
    compare("matches or beats the best text-only method on cold targets", "cold", hr, text_only)
    if k != MAX_K:
        compare(f"matches or beats the best text-only method on cold targets (HR@{MAX_K})",
                "cold", f"hr@{MAX_K}", text_only)
    compare("matches or beats EASE on warm targets", "warm", hr, ["ease"])
    compare(f"matches or beats EASE on warm targets (NDCG@{k})", "warm", nd, ["ease"])
    compare("matches or beats its own text-off variant on warm targets", "warm", hr,
            ["tfrec_text_off"])
    compare("matches or beats item2vec on warm targets", "warm", hr, ["item2vec_gensim"])
    compare("the ranking stage matches or beats stage 1 alone on all cases", "all", hr,
            [STAGE1])
    for group, target in (targets or {}).items():
        if full[group][hr] is None:  # a group without cases has nothing to check
            continue
        entry = {"check": f"HR@{k} on {group} targets >= {target}", "metric": hr,
                 "model": full[group][hr], "target": target, "met": full[group][hr] >= target}
        interval = paired(MODEL, float(target), group, hr) if paired is not None else None
        if interval is not None:
            entry["noise"] = interval.as_dict()
        checks.append(_judged(full, group, entry))
    return checks


def _judged(full: dict, group: str, check: dict) -> dict:
    """The check with its group ("all", "warm", "cold"), undecided (met None) when the
    model's group has too few cases."""
    check = {**check, "group": group}
    cases = full[group].get("cases")
    if cases is not None and cases < MIN_CASES:
        return {**check, "met": None, "cases": cases}
    return check


def verdict(check: dict) -> str:
    """'met', 'NOT met' or 'too few cases (n)'; ', within noise' after it when the
    difference's 95% interval holds 0 (`check_bar`'s "noise")."""
    if check["met"] is None:
        return f"too few cases ({check['cases']})"
    text = "met" if check["met"] else "NOT met"
    direction = check.get("noise", {}).get("direction")
    if direction == "within":
        text += ", within noise"
    elif direction == "unknown":
        text += ", too few users to tell"
    return text


def noise_text(check: dict) -> str:
    """'difference +0.0139 (95% interval +0.0056 to +0.0222, 1,234 users resampled)',
    with the ratio's ('1.045x, 95% interval 1.018x to 1.072x') where the check has
    one, the baseline the interval is against where it is not the best one, or ''
    for a check without one."""
    noise = check.get("noise")
    if not noise:
        return ""
    users = f"{noise['users']:,} user{'s' if noise['users'] != 1 else ''}"
    against = noise.get("against")
    vs = (f" against {label_of(against)}" if against and against != check.get("best_baseline")
          else "")
    if noise["interval95"] is None:
        text = (f"difference{vs} {noise['difference']:+.4f} (no interval: {users}, fewer "
                f"than {MIN_USERS})")
    else:
        low, high = noise["interval95"]
        text = (f"difference{vs} {noise['difference']:+.4f} (95% interval {low:+.4f} to "
                f"{high:+.4f}, {users} resampled)")
    if "ratio" in check:
        text += f"; {check['ratio']:.3f}x {label_of(check['best_baseline'])}"
    if "ratio_interval95" in check:
        low, high = check["ratio_interval95"]
        top = "no upper bound" if high is None else f"{high:.3f}x"
        text += f" (95% interval {low:.3f}x to {top})"
    return text
