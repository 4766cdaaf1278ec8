"""The study's table, plot and JSON from the jobs' results."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mlic.study import names
from mlic.study.stats import paired_difference, summarize

METRICS = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")

NAMES = {"mAP": "mAP", "CF1": "CF1", "OF1": "OF1", "CF1_top3": "CF1 top-3", "OF1_top3": "OF1 top-3"}


def collect(seed_folders: Dict[int, Path], arms: Sequence[str], split: str = "test") -> dict:
    """{arm: {seed: result}} for the results that exist (a missing job is left out)."""
    table: Dict[str, Dict[int, dict]] = {a: {} for a in arms}
    for seed, folder in seed_folders.items():
        for arm in arms:
            p = Path(folder) / arm / "result.json"
            if p.is_file():
                r = json.loads(p.read_text())
                if split in r["metrics"]:
                    table[arm][seed] = r
    return table


def summarize_study(results: Dict[str, Dict[int, dict]], baseline: str, split: str = "test",
                    labels: Optional[Dict[str, str]] = None, equal: Optional[Dict[str, str]] = None) -> dict:
    """Per arm: its readable name (mlic.study.names) and `labels`' description of its
    settings, mean ± sd of each metric over its seeds, the paired difference to the
    baseline over the seeds both have (95 % t interval; "paired"), the same against the
    student alone trained for as many iterations as the arm (`equal`: {arm: that
    baseline}; "paired_equal"), and the runtimes."""
    equal = equal or {}
    out = {}
    for arm, by_seed in results.items():
        seeds = sorted(by_seed)
        if not seeds:
            continue
        entry = {"name": names.name(arm), "label": (labels or {}).get(arm, arm), "seeds": seeds, "metrics": {},
                 "paired": {},
                 "paired_equal": {}, "seconds": {str(s): round(by_seed[s]["seconds"], 1) for s in seeds}}
        for m in METRICS:
            vals = [100 * by_seed[s]["metrics"][split][m] for s in seeds]
            sm = summarize(vals)
            entry["metrics"][m] = {"mean": sm.mean, "sd": sm.sd, "values": vals}
            for field, other in (("paired", baseline), ("paired_equal", equal.get(arm))):
                base = results.get(other, {}) if other else {}
                common = [s for s in seeds if s in base]
                if arm != other and arm != baseline and common:
                    d = paired_difference([100 * by_seed[s]["metrics"][split][m] for s in common],
                                          [100 * base[s]["metrics"][split][m] for s in common])
                    entry[field][m] = {"n": d.n, "mean": d.mean, "sd": d.sd, "low": d.low, "high": d.high,
                                       "wins": d.wins, "excludes_zero": d.excludes_zero}
        out[arm] = entry
    return out


def pm(m) -> str:
    """'mean ± sd' of a Summary or a {'mean', 'sd'} dict."""
    mean, sd = (m["mean"], m["sd"]) if isinstance(m, dict) else (m.mean, m.sd)
    return f"{mean:.1f}" if np.isnan(sd) else f"{mean:.1f} ± {sd:.1f}"


def _ci(d: Optional[dict]) -> str:
    if not d:
        return "—"
    if np.isnan(d["low"]):
        return f"{d['mean']:+.1f}"
    star = " *" if d["excludes_zero"] else ""
    return f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]{star}"


def format_table(summary: dict, baseline: str) -> str:
    """Markdown: one row per arm (baseline first, then by paired mAP difference): its name,
    its settings and folder, the metrics; a column of the difference to the equal-budget
    baseline where there is one."""
    arms = sorted(summary, key=lambda a: (a != baseline, -summary[a]["paired"].get("mAP", {}).get("mean", 0.0)))
    equal = any(summary[a].get("paired_equal") for a in arms)
    head = ("| model | settings | folder | seeds | " + " | ".join(NAMES[m] for m in METRICS) +
            " | Δ mAP vs no KD [95 % CI] | Δ CF1 | Δ OF1 | mAP wins |" +
            (" Δ mAP vs no KD at the same budget | wins |" if equal else "") + " s / run |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for a in arms:
        e = summary[a]
        p, q = e["paired"], e.get("paired_equal", {})
        secs = list(e["seconds"].values())
        wins = f"{p['mAP']['wins']}/{p['mAP']['n']}" if "mAP" in p else "—"
        extra = ""
        if equal:
            extra = f" {_ci(q.get('mAP'))} | " + (f"{q['mAP']['wins']}/{q['mAP']['n']}" if "mAP" in q else "—") + " |"
        rows.append(f"| {e.get('name', names.name(a))} | {e['label']} | `{a}` | {len(e['seeds'])} | " +
                    " | ".join(pm(e["metrics"][m]) for m in METRICS) +
                    f" | {_ci(p.get('mAP'))} | {_ci(p.get('CF1'))} | {_ci(p.get('OF1'))} | {wins} |{extra} "
                    f"{np.median(secs):.0f} |")
    return "\n".join(rows)


def plot_study(summary: dict, baseline: str, path: Path, title: str) -> None:
    """Paired differences to the baseline with their 95 % intervals, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in sorted(summary, key=lambda a: summary[a]["paired"].get("mAP", {}).get("mean", 0.0))
            if a != baseline and "mAP" in summary[a]["paired"]]
    panels = [("paired", m, f"Δ {m} vs no KD") for m in ("mAP", "CF1", "OF1")]
    if any(summary[a].get("paired_equal") for a in arms):
        panels.append(("paired_equal", "mAP", "Δ mAP vs no KD at the same budget"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.42 * len(arms) + 1.8), sharey=True)
    y = np.arange(len(arms))
    none = {"mean": np.nan, "low": np.nan, "high": np.nan, "excludes_zero": False}
    for ax, (field, m, name) in zip(axes, panels):
        d = [summary[a].get(field, {}).get(m, none) for a in arms]
        mean = np.array([x["mean"] for x in d])
        lo = np.array([x["low"] for x in d])
        hi = np.array([x["high"] for x in d])
        colors = ["tab:green" if x["excludes_zero"] and x["mean"] > 0 else
                  "tab:red" if x["excludes_zero"] else "tab:gray" for x in d]
        ax.axvline(0, color="k", lw=0.8)
        ok = ~np.isnan(lo)
        ax.errorbar(mean[ok], y[ok], xerr=[mean[ok] - lo[ok], hi[ok] - mean[ok]], fmt="none", ecolor="0.5",
                    capsize=3)
        ax.scatter(mean, y, c=colors, zorder=3)
        ax.set_title(name)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([textwrap.fill(summary[a].get("name", names.name(a)), 50) for a in arms], fontsize=8)
    n = max((summary[a]["paired"]["mAP"]["n"] for a in arms), default=0)
    fig.suptitle(f"{title}: distilled student minus student without KD, paired over {n} seeds "
                 f"(bars: 95 % t interval; green/red: interval excludes 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
