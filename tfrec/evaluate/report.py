"""The evaluation report: JSON, plots (PNG, matplotlib) and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from tfrec.evaluate.analyses import pca_2d
from tfrec.evaluate.bar import noise_text, verdict
from tfrec.evaluate.methods import ABLATION_PREFIX, MAX_K, MODEL, STAGE1, label_of
from tfrec.evaluate.table import (SOURCE_LABELS, cold_slots, format_report, list_width,
                                  new_slots_clause, tunings_of, vs_model_lines)
from tfrec.run_folder import ReportFolder
from tfrec.utils import ensure_folder, json_ready

PLOTS = ("hr_at_k.png", "warm_cold.png", "index_recall.png", "embedding_map.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    _pyplot().close(figure)


def _line_style(name: str) -> dict:
    """The model's line thick, stage 1's dotted, the ablations' dashed."""
    if name == MODEL:
        return {"linewidth": 2.5}
    if name == STAGE1:
        return {"linewidth": 1.8, "linestyle": ":"}
    if name.startswith(ABLATION_PREFIX):
        return {"linewidth": 1.0, "linestyle": "--"}
    return {"linewidth": 1.3}


def plot_hr_curves(report: dict, path: Path) -> None:
    """HR@K per method; a two-stage row's curve stops at its list's width N (a target
    outside its N candidates is a miss at every K)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for ax, group in zip(axes, ("all", "warm", "cold")):
        for name, m in report["methods"].items():
            curve = m[group]["hr_curve"]
            if not curve:
                continue
            label = m["label"]
            if "list_width" in m and m["list_width"] < MAX_K:
                label += f" (list of {m['list_width']})"
            ax.plot(np.arange(1, len(curve) + 1), curve, label=label, **_line_style(name))
        ax.set_title(f"{group} targets ({next(iter(report['methods'].values()))[group]['cases']:,}"
                     " cases)")
        ax.set_xlabel("K")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("HR@K")
    axes[0].legend(fontsize=8)
    _save(fig, path)


GROUPS = ("all", "warm", "cold")


def bar_marks(report: dict) -> list[tuple[str, float]]:
    """(group, figure) of each check on the plot's metric (HR@k): the figure the model's
    bar of that group must reach (a target given, or the baseline it is compared with)."""
    marks = []
    for check in report.get("checks", []):
        if check.get("metric") != f"hr@{report['k']}" or check.get("group") not in GROUPS:
            continue
        value = check.get("target", check.get("baseline"))
        if value is not None:
            marks.append((check["group"], float(value)))
    return marks


def plot_warm_cold(report: dict, path: Path) -> None:
    """HR@k per method and group; the bar's checks on HR@k as dotted marks over the
    model's bars, at the figure each must reach."""
    plt = _pyplot()
    k = report["k"]
    names = list(report["methods"])
    fig, ax = plt.subplots(figsize=(max(10, 1.5 * len(names)), 4.2))
    width = 0.8 / 3
    x = np.arange(len(names))
    for i, group in enumerate(GROUPS):
        values = [np.nan if report["methods"][n][group][f"hr@{k}"] is None
                  else report["methods"][n][group][f"hr@{k}"] for n in names]
        bars = ax.bar(x + (i - 1) * width, values, width, label=group)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    marks = bar_marks(report) if MODEL in names else []
    title = f"HR@{k}: all, warm and cold targets"
    if marks:
        centre = [x[names.index(MODEL)] + (GROUPS.index(g) - 1) * width for g, _ in marks]
        ax.hlines([v for _, v in marks], [c - 0.6 * width for c in centre],
                  [c + 0.6 * width for c in centre], colors="black", linestyles=":",
                  linewidth=2, label="the bar (what the model must reach)", gid="the-bar")
        title += " (dotted: the bar)"
    ax.set_xticks(x, [report["methods"][n]["label"] for n in names], rotation=15, fontsize=8)
    ax.set_ylabel(f"HR@{k}")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def plot_index_recall(report: dict, path: Path) -> None:
    plt = _pyplot()
    recall = report["index_recall"]["recall"]
    ks = [int(k) for k in recall]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [recall[str(k)] for k in ks], marker="o")
    ax.set_ylim(min(0.8, min(recall.values()) - 0.02), 1.005)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k vs exact search")
    r = report["index_recall"]
    on = (f"{r['queries']:,} sessions, at export" if r.get("measured")
          else f"{r['queries']:,} case queries")
    ax.set_title(f"index recall ({on})")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_embedding_map(points: np.ndarray, codes: np.ndarray, names: list[str],
                       cold: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6.5))
    other = codes < 0
    ax.scatter(points[other, 0], points[other, 1], s=3, c="lightgrey", label="other")
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        mask = codes == i
        ax.scatter(points[mask & ~cold, 0], points[mask & ~cold, 1], s=6, color=cmap(i % 10),
                   label=name)
        ax.scatter(points[mask & cold, 0], points[mask & cold, 1], s=30, color=cmap(i % 10),
                   marker="x")
    ax.set_title("item embeddings, first two principal components (x: cold items)")
    ax.legend(fontsize=7, markerscale=2, loc="best")
    _save(fig, path)


def plot_conversion(report: dict, path: Path) -> None:
    plt = _pyplot()
    share = report["conversion"]["share_in_top_k"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(share) + 1), share)
    ax.set_xlabel("K")
    ax.set_ylabel("share of sessions")
    ax.set_title("converted item in the top K given the session's other items")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _split_text(p: dict) -> str:
    """How the cases were made, in words."""
    if p.get("split_by") == "user":
        text = f"by user ({p['holdout_users']:.0%} of users held out)"
    else:
        text = (str(p["split_date"]) if p.get("split_date")
                else f"the latest {p.get('split_fraction') or 0:.0%} of the events")
    if p.get("cold_items"):
        text += f", {p['cold_items']:.0%} of items hidden from training"
    return text


def write_report(report: dict, out_dir: str | Path, item_embeddings: np.ndarray,
                 codes: np.ndarray, names: list[str], cold: np.ndarray) -> Path:
    """Writes the report (JSON), its plots (PNG) and its page (HTML) into `out_dir` (a
    `ReportFolder`); returns the page's path."""
    folder = ReportFolder(ensure_folder(out_dir, "report folder"))
    out_dir = folder.path
    plots = ensure_folder(folder.plots, "plots folder")
    plot_hr_curves(report, plots / "hr_at_k.png")
    plot_warm_cold(report, plots / "warm_cold.png")
    plot_index_recall(report, plots / "index_recall.png")
    plot_embedding_map(pca_2d(item_embeddings), codes, names, cold, plots / "embedding_map.png")
    files = list(PLOTS)
    if report["conversion"].get("available"):
        plot_conversion(report, plots / "conversion_rank.png")
        files.append("conversion_rank.png")
    report = {**report, "plots": [f"{plots.name}/{f}" for f in files]}
    folder.json_file.write_text(json.dumps(json_ready(report), indent=2) + "\n")
    folder.html_file.write_text(render_html(report, out_dir))
    return folder.html_file


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _img(out_dir: Path, relative: str, alt: str) -> str:
    data = base64.b64encode((out_dir / relative).read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(alt)}" data-file="{html.escape(relative)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption>'
            "</figure>")


def _cold_start_html(report: dict) -> str:
    cs = report.get("cold_start") or {}
    if not cs.get("available"):
        return ""
    k, share = report["k"], cs["cold_share"]
    return (f"<h2>Cold start</h2><p>The {cs['warm_cases']:,} warm targets scored by their text "
            f"alone, as if each were a brand-new item: HR@{k} {_num(cs['warm_as_new'][f'hr@{k}'])}"
            f" (scored by their full embedding: {_num(cs['warm'][f'hr@{k}'])}). Cold items hold "
            f"{html.escape(cold_slots(share, k), quote=False)}; they are "
            f"{share['targets']:.1%} of the targets and {share['catalogue']:.1%} of the "
            "catalogue.</p>")


def _ranking_stage_html(report: dict) -> str:
    """The ranking stage's list and its candidate recall per source and group."""
    rs = report.get("ranking_stage")
    if not rs:
        return ""
    k, width = report["k"], list_width(rs)
    recall = rs["candidate_recall"]
    rows = "".join(f"<tr><th>{html.escape(SOURCE_LABELS[source])}</th>"
                   + "".join(f"<td>{_num(recall[source][g])}</td>"
                             for g in ("all", "warm", "cold")) + "</tr>"
                   for source in ("merged", "two_tower", "table"))
    ablations = ("The rows \"tfrec w/o GROUP\" are the ranker refitted on the same training "
                 "lists without that feature group's columns." if rs.get("ablations") else
                 "Ablations off (<code>--no-ablations</code>).")
    return (f"<h2>Ranking stage</h2><p>The model's row is both stages: stage 1 (the "
            f"two-tower) and the item-item table make each case's list of {width} candidates "
            f"({rs['table_share']:.0%} of the slots from the table{new_slots_clause(rs)}), the "
            "ranker orders it; a "
            "target outside the list is a miss at every K"
            + (f", so the two-stage rows' HR@K curves stop at K = {width}" if width < MAX_K
               else "")
            + (f", and their HR@{k} is their HR@{width}" if k > width else "")
            + f". {ablations}</p><h3>Candidate recall (HR@{width})</h3>"
            "<table><tr><th>list</th><th>all</th><th>warm</th><th>cold</th></tr>"
            f"{rows}</table>" + _vs_model_html(report))


def _vs_model_html(report: dict) -> str:
    """The model's other rows against both stages (`vs_model_lines`), as a list."""
    lines = vs_model_lines(report)
    if not lines:
        return ""
    return (f"<h3>{html.escape(lines[0][0].upper() + lines[0][1:])}</h3><ul>"
            + "".join(f"<li>{html.escape(line.strip())}</li>" for line in lines[1:]) + "</ul>")


def _tuning_html(report: dict) -> str:
    """Each tuned baseline's validation HR@k per value of its setting."""
    k = report["k"]
    parts = []
    for m, t in ((m, t) for m in report["methods"].values() for t in tunings_of(m)):
        values = "".join(f"<th>{html.escape(str(v))}</th>" for v in t[f"hr@{k}"])
        hrs = "".join(("<td class=\"chosen\">" if str(v) == str(t["chosen"]) else "<td>")
                      + f"{_num(hr)}</td>" for v, hr in t[f"hr@{k}"].items())
        parts.append(f"<h3>{html.escape(m['label'])}: {html.escape(t['parameter'])} "
                     f"{html.escape(str(t['chosen']))}</h3><p>Chosen by HR@{k} on "
                     f"{t['validation_cases']:,} validation cases: training sessions left out "
                     f"of a fit on the other {t['fit_sessions']:,}, one item of each hidden and "
                     "asked for from the rest; then refitted on every training session. The "
                     "test cases play no part.</p>"
                     f"<table><tr><th>{html.escape(t['parameter'])}</th>{values}</tr>"
                     f"<tr><th>HR@{k}</th>{hrs}</tr></table>")
    return "<h2>Baseline settings</h2>" + "".join(parts) if parts else ""


def _check_class(check: dict) -> str:
    return "unsure" if check["met"] is None else "met" if check["met"] else "missed"


def render_html(report: dict, out_dir: Path) -> str:
    k = report["k"]
    p = report["protocol"]
    rows = []
    for m in report["methods"].values():
        cells = "".join(f"<td>{_num(m[g][f'{metric}@{k}'])}</td>" for metric in ("hr", "ndcg")
                        for g in ("all", "warm", "cold"))
        rows.append(f"<tr><th>{html.escape(m['label'])}</th>{cells}<td>{m['seconds']:.0f}s</td>"
                    "</tr>")
    for skip in report.get("skipped", {}).values():
        rows.append(f"<tr><th>{html.escape(skip['label'])}</th><td colspan=\"7\" "
                    f"class=\"skipped\">{html.escape(skip['reason'])}</td></tr>")
    checks = "".join(
        f"<li class=\"{_check_class(c)}\">{html.escape(verdict(c))}: "
        f"{html.escape(c['check'])}: {c['model']:.4f} vs "
        + (f"{c['baseline']:.4f} ({html.escape(label_of(c['best_baseline']))})"
           if "baseline" in c else f"{c['target']}")
        + (f"; {html.escape(noise_text(c))}" if noise_text(c) else "") + "</li>"
        for c in report["checks"])
    figures = "".join(_img(out_dir, rel, title) for rel, title in zip(report["plots"], (
        f"HR@K, K = 1..{MAX_K}, per method", f"HR@{k} on warm and cold targets",
        "index recall against exact search",
        "2-D map of item embeddings by text category", "converted-item rank")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tfrec evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 4px 10px; border-bottom: 1px solid #ddd; }}
td {{ text-align: right; font-family: monospace; }} th {{ text-align: left; }}
.met {{ color: #176117; }} .missed {{ color: #a11; }} .unsure {{ color: #666; }}
td.skipped {{ text-align: left; font-family: sans-serif; color: #666; }}
td.chosen {{ font-weight: bold; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: 1em; }}
</style></head><body>
<h1>tfrec evaluation</h1>
<p>Run <code>{html.escape(report['run'])}</code> ({html.escape(Path(report['checkpoint']).name)}).
{p['cases']:,} held-out cases ({p['warm_cases']:,} warm, {p['cold_cases']:,} cold targets),
{p['candidates']:,} candidate items; split {html.escape(_split_text(p))},
seed {p['eval_seed']}.</p>
<table><tr><th>method</th><th>HR@{k}</th><th>warm</th><th>cold</th><th>NDCG@{k}</th>
<th>warm</th><th>cold</th><th>time</th></tr>{''.join(rows)}</table>
<h2>Checks</h2><ul>{checks}</ul>
{_ranking_stage_html(report)}
{_cold_start_html(report)}
{_tuning_html(report)}
<h2>Plots</h2>{figures}
<h2>As printed</h2><pre>{html.escape(format_report(report))}</pre>
</body></html>
"""
