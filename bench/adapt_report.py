"""The edge's adaptation, measured: one table over several suite runs (one per bundle).

Reads the ``summary.json`` each ``python -m bench.suite --out DIR`` run wrote and the
JSON of ``python -m bench.specialization --adapted-only --out FILE`` runs, and writes a
markdown summary of the issue's figures for each bundle: the headline (runs50 at
4g against cloud_only and the oracle), the share of inputs each cascade step
answered, the online audit, and the adapted against the general hit rate.

    python -m bench.adapt_report --runs bench/results/adapt-r20-tinycnn ... \\
        --adapted bench/results/adapted-r20-tinycnn.json ... --out bench/results/adapt.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench import provenance

GOAL_SPEEDUP, GOAL_POINTS, GOAL_ORACLE = 5.0, 1.0, 1.5


def _rows(run: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    summary = json.loads((run / "summary.json").read_text())
    # {"provenance", "rows"}; a list of rows before results recorded their provenance
    rows = summary["rows"] if isinstance(summary, dict) else summary
    return {(r["stream"], r["network"], r["system"]): r for r in rows}


def _command(run: Path) -> str:
    summary = json.loads((run / "summary.json").read_text())
    if isinstance(summary, dict):
        return provenance.command_of(summary)
    for line in (run / "report.md").read_text().splitlines():  # written before provenance
        if line.startswith("    python bench/suite.py"):  # how reports named it then
            return line.strip()
    return "?"


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def headline(run: Path, stream: str = "runs50", net: str = "4g") -> list[str]:
    by = _rows(run)
    cloud, ours, oracle = (by.get((stream, net, s)) for s in ("cloud_only", "cachenet", "oracle"))
    if not (cloud and ours and oracle):
        return [f"| {run.name} | not run |"]
    speed = cloud["mean_ms"] / ours["mean_ms"]
    points = 100 * (ours["accuracy"] - cloud["accuracy"])
    vs = ours["mean_ms"] / oracle["mean_ms"]
    steps = ", ".join(f"{k[5:]} {v:.1%}" for k, v in sorted(ours.items())
                      if k.startswith("step_")) or "none"
    audit = (f"{ours['audited']} audited, agreement {ours['audit_agreement']:.3f}, bound "
             f">= {ours['audit_bound']:.3f}" if ours.get("audited") else "no audit fell in the run")
    edge_agree = _edge_agreement(ours)
    return [f"| {run.name} | {cloud['mean_ms']:.1f} (server {cloud['cloud_server_ms_mean']:.1f}) "
            f"| {ours['mean_ms']:.1f} | {speed:.2f}x ({_verdict(speed >= GOAL_SPEEDUP)}) "
            f"| {points:+.2f} ({_verdict(abs(points) <= GOAL_POINTS)}) "
            f"| {vs:.2f}x ({_verdict(vs <= GOAL_ORACLE)}) | {1 - ours['escalation_rate']:.1%}: "
            f"{steps} | {edge_agree} | {audit} |"]


def _edge_agreement(r: dict[str, Any]) -> str:
    """Agreement with the full model among the edge's own answers, from the row's overall
    agreement (the cloud's answers agree by definition)."""
    edge = 1 - r["escalation_rate"]
    if edge <= 0:
        return "n/a"
    disagree = (1 - r["agreement"]) * r["n"]
    return f"{1 - disagree / (edge * r['n']):.3f} ({round(disagree)} of {round(edge * r['n'])})"


def adapted_lines(path: Path) -> list[str]:
    r = json.loads(path.read_text())
    out = []
    for target, f in r["by_target"].items():
        g, a = f["general"], f["adapted"]
        ratio = "n/a" if f["adapted_ratio"] is None else f"{f['adapted_ratio']:.2f}x"
        out.append(f"| {path.stem} | {target} | {g['hit_rate']:.3f} ({g['agreement']}) | "
                   f"{a['hit_rate']:.3f} ({a['agreement']}) | {ratio} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, nargs="+", required=True)
    p.add_argument("--adapted", type=Path, nargs="*", default=[])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    lines = ["# The edge adapts to its stream: measured", "",
             f"Written by `{provenance.command('bench.adapt_report', argv)}` from the "
             "runs below; each figure is that run's.", "",
             "## Headline: runs50 at 4g, cachenet (prior, audit, layer caches if any) on a "
             "fresh agent", "",
             "| run | cloud_only ms (cloud server's own) | cachenet ms | faster than cloud_only "
             f"(goal >= {GOAL_SPEEDUP:g}x) | accuracy points vs cloud_only (goal within "
             f"{GOAL_POINTS:g}) | vs the oracle (goal <= {GOAL_ORACLE:g}x) | answered at the "
             "edge, by step | agreement of edge answers | online audit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in args.runs:
        lines += headline(run)
    lines += ["", "Commands:", ""] + [f"- `{run.name}`: `{_command(run)}`" for run in args.runs]
    if args.adapted:
        lines += ["", "## The general model against the same model adapted to the stream's "
                  "prior", "", "On the stream of `python -m bench.specialization` (runs of mean "
                  "50, two or three classes active), at each agreement target; the goal is 2x.",
                  "", "| run | target | general hit rate (agreement) | adapted hit rate "
                  "(agreement) | ratio |", "|---|---|---|---|---|"]
        for path in args.adapted:
            lines += adapted_lines(path)
        lines += ["", "Commands:", ""] + [
            f"- `{path.stem}`: `{provenance.command_of(json.loads(path.read_text()))}`"
            for path in args.adapted]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
