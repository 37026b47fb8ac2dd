"""The evaluation report's plots: the bar drawn on the warm/cold plot, whole category
names in the embedding map's legend (checked in the SVG matplotlib writes)."""

import re
import types

import numpy as np

from tfrec.evaluate.analyses import categories_of
from tfrec.evaluate.bar import check_bar
from tfrec.evaluate.report import plot_embedding_map, plot_warm_cold


def method(label, all_, warm, cold):
    return {"label": label, **{g: {"cases": 100, "hr@10": v}
                               for g, v in (("all", all_), ("warm", warm), ("cold", cold))}}


def report(targets=None):
    methods = {"tfrec": method("tfrec (full model)", 0.30, 0.32, 0.20),
               "ease": method("EASE", 0.25, 0.28, 0.0)}
    return {"k": 10, "methods": methods, "checks": check_bar(methods, 10, targets)}


def svg_of(plot, tmp_path, *args):
    path = tmp_path / "plot.svg"
    plot(*args, path)
    return path.read_text()


def test_the_warm_cold_plot_draws_the_bar_its_title_names(tmp_path):
    r = report({"cold": 0.15})
    marked = {(c["group"], c["metric"]) for c in r["checks"]}
    assert marked >= {("all", "hr@10"), ("warm", "hr@10"), ("cold", "hr@10")}
    svg = svg_of(plot_warm_cold, tmp_path, r)
    assert "(dotted: the bar)" in svg
    bar = re.search(r'<g id="the-bar">(.*?)</g>', svg, re.S)
    assert bar is not None
    # One dotted mark per HR@10 check: beats EASE on all, matches EASE on warm, the target.
    assert bar.group(1).count("<path") == 3 and "stroke-dasharray" in bar.group(1)
    assert "<!-- the bar (what the model must reach) -->" in svg  # in the legend


def test_without_checks_on_the_plot_the_title_promises_no_line(tmp_path):
    r = {**report(), "checks": []}
    svg = svg_of(plot_warm_cold, tmp_path, r)
    assert "dotted" not in svg and 'id="the-bar"' not in svg


def test_the_embedding_maps_legend_keeps_whole_category_names(tmp_path):
    texts = ["", "Alien (Sci-Fi)", "Dune Sci-Fi", "Solaris sci-fi", "Heat Crime", "Up Kids'",
             "No text"]
    vocab = types.SimpleNamespace(text=np.asarray(texts, dtype=object), market_names=["x"],
                                  market=np.zeros(len(texts), dtype=np.int32))
    codes, names = categories_of(vocab)
    assert names[0] == "Sci-Fi" and set(names) == {"Sci-Fi", "Crime", "Kids", "text"}
    assert codes[0] == -1 and list(codes[1:4]) == [0, 0, 0]
    points = np.random.default_rng(0).normal(size=(len(texts), 2))
    svg = svg_of(plot_embedding_map, tmp_path, points, codes, names,
                 np.zeros(len(texts), dtype=bool))
    assert "<!-- Sci-Fi -->" in svg and "<!-- fi -->" not in svg
