"""The table `tfrec evaluate` prints."""

from __future__ import annotations

from tfrec.evaluate.bar import noise_text, verdict
from tfrec.evaluate.methods import MAX_K, label_of

SOURCE_LABELS = {"merged": "the merged list", "two_tower": "two-tower top N",
                 "table": "item-item table top N"}


def new_slots_clause(rs: dict) -> str:
    """How the candidate list treats items without behaviour, as a clause (or nothing)."""
    n, m = rs.get("new_slots", 0), rs.get("text_slots", 0)
    return ((f"; the two-tower's first {n} items without behaviour go first in its list"
             if n else "")
            + (f"; then up to {m} items without behaviour found by their text" if m else ""))


def list_width(rs: dict) -> int:
    """A candidate list's width: N, then the text slots."""
    return rs["num_candidates"] + rs.get("text_slots", 0)


def cold_slots(share: dict, k: int) -> str:
    """The cold items' share of the top-k slots, in words: stage 1's and, for a run with
    a ranking stage, both stages'."""
    if "both_stages_top_k_slots" not in share:
        return f"{share['top_k_slots']:.1%} of the top-{k} slots"
    return (f"{share['top_k_slots']:.1%} of stage 1's top-{k} slots and "
            f"{share['both_stages_top_k_slots']:.1%} of both stages'")


def padded(label: str, width: int) -> str:
    """`label` padded to `width`, or followed by a space where it is longer."""
    return f"{label:<{width}}" if len(label) < width else label + " "


def _share(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def ranking_stage_lines(report: dict) -> list[str]:
    """The ranking stage's lines: its list, its candidate recall per source and group."""
    rs = report.get("ranking_stage")
    if not rs:
        return []
    k, width = report["k"], list_width(rs)
    recall = rs["candidate_recall"]
    lines = [f"ranking stage: the ranker orders {width} candidates per case "
             f"({rs['table_share']:.0%} of the slots from the item-item table"
             f"{new_slots_clause(rs)});",
             "  a target outside them is a miss at every K"
             + (f": the two-stage rows' HR@K curves stop at K = {width}" if width < MAX_K
                else "")
             + (f"; HR@{k} of the two-stage rows is their HR@{width}" if k > width else ""),
             f"candidate recall (HR@{width}), all / warm / cold targets:"]
    for source in ("merged", "two_tower", "table"):
        r = recall[source]
        lines.append(f"  {SOURCE_LABELS[source]:<22}" + " / ".join(
            _share(r[g]) for g in ("all", "warm", "cold")))
    if not rs.get("ablations"):
        lines.append("  (ablations off: evaluate.no_ablations)")
    return lines


def vs_model_lines(report: dict) -> list[str]:
    """The model's other rows (stage 1 alone, the ablations) against both stages: the
    HR@k difference on all / warm / cold targets, and its 95% interval ("vs_model")."""
    k = report["k"]
    rows = [(m["label"], m["vs_model"]) for m in report["methods"].values()
            if m.get("vs_model")]
    if not rows:
        return []
    lines = [f"against both stages (HR@{k} difference, 95% interval with the users "
             "resampled), all / warm / cold targets:"]
    for label, vs in rows:
        parts = []
        for group in ("all", "warm", "cold"):
            noise = vs.get(group, {}).get(f"hr@{k}")
            if noise is None:
                parts.append("-")
            elif noise["interval95"] is None:
                parts.append(f"{noise['difference']:+.4f} (too few users)")
            else:
                low, high = noise["interval95"]
                parts.append(f"{noise['difference']:+.4f} ({low:+.4f} to {high:+.4f})")
        lines.append(f"  {padded(label, 22)}" + " / ".join(parts))
    return lines


def tunings_of(method: dict) -> list[dict]:
    """A method's choices of a setting (`tuning`: one, or a list of them)."""
    tuning = method.get("tuning")
    return [] if not tuning else tuning if isinstance(tuning, list) else [tuning]


def tuning_line(label: str, tuning: dict, k: int) -> str:
    """'EASE: lambda 20 chosen on 1,324 validation cases ... (HR@10 by lambda: 1 0.3761, ...)'."""
    grid = ", ".join(f"{value} {hr:.4f}" for value, hr in tuning[f"hr@{k}"].items())
    given = f" (with lambda {tuning['lambda']:g})" if "lambda" in tuning else ""
    return (f"{label}: {tuning['parameter']} {tuning['chosen']}{given} chosen on "
            f"{tuning['validation_cases']:,} validation cases held out of the training "
            f"sessions (HR@{k} by {tuning['parameter']}: {grid})")


def format_report(report: dict) -> str:
    """The table `tfrec evaluate` prints."""
    k = report["k"]
    p = report["protocol"]
    lines = [f"{p['cases']:,} cases ({p['warm_cases']:,} warm, {p['cold_cases']:,} cold "
             f"targets), {p['candidates']:,} candidate items"
             + ("\nwarning: these are not the cases the run trained with (the data changed "
                "since): not the run's own protocol" if p.get("data_matches_run") is False
                else ""),
             f"{'method':<24}{'HR@' + str(k):>8}{'warm':>8}{'cold':>8}"
             f"{'NDCG@' + str(k):>9}{'warm':>8}{'cold':>8}{'time':>8}"]
    hr, nd = f"hr@{k}", f"ndcg@{k}"

    def cell(value, width):
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"

    for name, m in report["methods"].items():
        lines.append(padded(m["label"], 24)
                     + "".join(cell(m[g][hr], 8) for g in ("all", "warm", "cold"))
                     + cell(m["all"][nd], 9)
                     + "".join(cell(m[g][nd], 8) for g in ("warm", "cold"))
                     + f"{m['seconds']:>7.0f}s")
    for skip in report.get("skipped", {}).values():
        lines.append(f"{skip['label']:<24}{skip['reason']}")
    for m in report["methods"].values():
        for tuning in tunings_of(m):
            lines.append(tuning_line(m["label"], tuning, k))
    lines += ranking_stage_lines(report)
    lines += vs_model_lines(report)
    r = report["index_recall"]
    kind = {"export": "the export's index", "brute_force": "exact search, the catalogue too "
            "small for ScaNN"}.get(r["index"], "ScaNN")
    on = (f"{r['queries']:,} sessions, {r['measured']}" if r.get("measured")
          else f"{r['queries']:,} case queries")
    lines.append(f"index recall@10 ({kind} vs exact, {on}): "
                 + ("n/a" if "10" not in r["recall"] else f"{r['recall']['10']:.4f}"))
    conv = report["conversion"]
    lines.append("converted-item rank: " + (
        f"{conv['sessions']:,} sessions, median rank {conv['median_rank']:.0f}"
        if conv["available"] else f"n/a ({conv['reason']})"))
    cs = report.get("cold_start", {})
    if cs.get("available"):
        share = cs["cold_share"]
        lines.append(f"cold start: warm targets scored by their text alone HR@{k} "
                     f"{cs['warm_as_new'][hr]:.4f} (by their full embedding "
                     f"{cs['warm'][hr]:.4f}); cold items hold {cold_slots(share, k)} "
                     f"({share['targets']:.1%} of targets, "
                     f"{share['catalogue']:.1%} of the catalogue)")
        if cs.get("warning"):
            lines.append(f"  warning: {cs['warning']}")
    elif cs:
        lines.append(f"cold start: n/a ({cs['reason']})")
    for c in report["checks"]:
        against = (f"{c['baseline']:.4f} ({label_of(c['best_baseline'])})"
                   if "baseline" in c else f"{c['target']}")
        noise = noise_text(c)
        lines.append(f"  [{verdict(c)}] {c['check']}: "
                     f"{c['model']:.4f} vs {against}" + (f"; {noise}" if noise else ""))
    return "\n".join(lines)
