"""``bench/results/layercache.md`` and its plots, from ``layercache.json``.

Each goal of the layer-cache issue is checked against the measured figures and
reported as met or missed, with by how much. A lookup's cost is set against the
compute it skips (the uncached model's time per request times the share of MACs
saved) and, separately, against the net time saved, which also pays for running
the model stage by stage (at batch 1 on a CPU that overhead can exceed what is
saved: the tables say so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.provenance import command_of, machine_of

GOALS = {"iid_half_macs": 0.50, "agreement": 0.99, "video_first_half": 0.85,
         "throughput": 1.5, "lookup_share": 0.10, "wan_speedup": 10.0,
         "wan_accuracy_points": 1.0}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _f(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def skipped_share(r: dict[str, Any]) -> float | None:
    """Lookup time per request over the time of the compute the caches skipped: the
    uncached model's time per request times the share of its MACs saved."""
    skipped = r["uncached_ms_per_request"] * r["macs_saved_share"]
    return r["lookup_ms_per_request"] / skipped if skipped > 0 else None


def _goals(models: dict[str, Any], wan: dict[str, Any] | None) -> list[str]:
    lines = ["| goal | model | measured | |", "|---|---|---|---|"]
    for name, m in models.items():
        iid = m["traces"]["iid"]["all"]
        ok = iid["at_most_half_macs"] >= GOALS["iid_half_macs"] and \
            iid["agreement"] >= GOALS["agreement"]
        lines.append(f"| iid: >= 50% answered at <= half the MACs, agreement >= 0.99 | {name} | "
                     f"{_pct(iid['at_most_half_macs'])} at agreement {_f(iid['agreement'])} "
                     f"(oracle potential {_pct(m['oracle_potential']['test_iid']['all'])}) | "
                     f"{_met(ok)} |")
        video = m["traces"]["video"]["all"]
        ok = video["at_most_half_macs"] >= GOALS["video_first_half"] and \
            video["agreement"] >= GOALS["agreement"]
        lines.append(f"| video: >= 85% end in the first half, agreement >= 0.99 | {name} | "
                     f"{_pct(video['at_most_half_macs'])} at agreement {_f(video['agreement'])} "
                     f"| {_met(ok)} |")
        tp = m.get("throughput_video")
        if tp:
            lines.append(f"| video: cloud throughput with caches >= 1.5x without | {name} | "
                         f"{tp['ratio']:.2f}x ({tp['layered_fps']:.0f} vs "
                         f"{tp['plain_fps']:.0f} frames/s, batch {tp['batch']}, "
                         f"{tp['device']}) | {_met(tp['ratio'] >= GOALS['throughput'])} |")
        worst = max(((skipped_share(row) or 0.0, f"{trace}/{kind}")
                     for trace, kinds in m["traces"].items() for kind, row in kinds.items()
                     if row["answered_by_caches"] > 0), default=(0.0, "-"))
        lines.append(f"| every cache's lookup <= 10% of the compute it saves (lookup time / "
                     f"time of the MACs skipped) | {name} | "
                     f"worst {_pct(worst[0])} ({worst[1]}) | "
                     f"{_met(worst[0] <= GOALS['lookup_share'])} |")
    if wan:
        r = wan["rows"]
        speed = r["cloud_only"]["mean_ms"] / r["cachenet_layercache"]["mean_ms"]
        points = 100 * (r["cloud_only"]["accuracy"] - r["cachenet_layercache"]["accuracy"])
        lines.append(f"| video at 4g: cachenet_layercache >= 10x faster than cloud_only, "
                     f"accuracy within 1 point | resnet20 | {speed:.1f}x, "
                     f"{points:+.2f} points below | "
                     f"{_met(speed >= GOALS['wan_speedup'] and points <= 1.0)} |")
    return lines


def _trace_table(m: dict[str, Any]) -> list[str]:
    lines = ["| trace | caches | answered | <= half MACs | agreement | accuracy (uncached) | "
             "MACs saved | ms / request (uncached) | lookups, ms | lookup / skipped (MACs, "
             "time) | lookup / net time saved |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for trace, kinds in m["traces"].items():
        for kind, r in kinds.items():
            lines.append(
                f"| {trace} | {kind} | {_pct(r['answered_by_caches'])} | "
                f"{_pct(r['at_most_half_macs'])} | {_f(r['agreement'])} | "
                f"{_f(r['accuracy'])} ({_f(r['uncached_accuracy'])}) | "
                f"{_pct(r['macs_saved_share'])} | {r['ms_per_request']:.2f} "
                f"({r['uncached_ms_per_request']:.2f}) | {r['lookup_ms_per_request']:.3f} | "
                f"{_pct(r['lookup_vs_saved_macs'])}, {_pct(skipped_share(r))} | "
                f"{_pct(r['lookup_vs_saved_time'])} |")
    return lines


def _plots(result: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, m in result["models"].items():
        fig, ax = plt.subplots(figsize=(8, 4))
        sites = m["site_names"]
        width = 0.8 / len(m["traces"])
        for i, (trace, kinds) in enumerate(m["traces"].items()):
            share = [kinds["all"]["answered_per_site"][s] for s in sites]
            ax.bar([j + i * width for j in range(len(sites))], share, width, label=trace)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sites))], sites, rotation=30)
        ax.set(ylabel="share of requests answered", title=f"{name}: where requests end "
               "(all kinds)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"layercache-sites-{name}.png", dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind, points in m["frontier_iid"].items():
            ax.plot([1 - p["macs_share"] for p in points], [p["agreement"] for p in points],
                    marker="o", label=kind)
        ax.set(xlabel="share of MACs saved", ylabel="agreement with the uncached model",
               title=f"{name}: MACs-agreement frontier on iid (targets 0.95-0.999)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"layercache-frontier-{name}.png", dpi=110)
        plt.close(fig)
        files += [f"layercache-sites-{name}.png", f"layercache-frontier-{name}.png"]
    return files


def write_report(result: dict[str, Any], out: Path) -> None:
    wan_file = out / "layercache-wan.json"
    wan = json.loads(wan_file.read_text()) if wan_file.exists() else None
    machine = machine_of(result)
    commit = (result.get("provenance") or {}).get("commit") or "unknown"
    lines = ["# Layer caches", "", f"Command: `{command_of(result)}` at commit {commit}, on "
             f"{machine.get('cpus')} CPUs ({machine.get('platform')}), GPU "
             f"{machine.get('gpu')}, device {result['device']}; {result['requests']} "
             f"requests per trace, caches fitted on {result['fit']} training images; "
             f"{result['wall_s']} s.", "", "## Goals", ""]
    lines += _goals(result["models"], wan)
    for name, m in result["models"].items():
        pot = m["oracle_potential"]["test_iid"]
        measured_by = command_of(m) if m.get("provenance") or m.get("command") \
            else command_of(result)  # each model keeps the command that measured it
        lines += ["", f"## {name}", "", f"Command: `{measured_by}` "
                  f"(device {m.get('device', result['device'])}, {m.get('seconds', '?')} s).",
                  "", f"{len(m['site_names'])} sites; full model {m['full_macs'] / 1e6:.1f} M MACs "
                  f"per input ({m['views']} view(s)); half of it is reached at site "
                  + next((s for s, mac in zip(m["site_names"], m["site_macs"], strict=True)
                          if mac > m["full_macs"] / 2), "-") + " (the first past half).", "",
                  "Oracle potential on the test split (Freeze's measurement: some cache within "
                  "the first half of the MACs gives the uncached model's label, confidence "
                  "ignored): " + ", ".join(f"{k} {_pct(v)}" for k, v in pot.items()) + ".", ""]
        lines += _trace_table(m)
        tp = m.get("throughput_video")
        if tp:
            lines += ["", f"Cloud throughput on video from {tp['cameras']} cameras, batch "
                      f"{tp['batch']} ({tp['device']}): "
                      f"{tp['layered_fps']:.0f} frames/s with layer caches, "
                      f"{tp['plain_fps']:.0f} without ({tp['ratio']:.2f}x); compute per request "
                      f"{tp['layered_ms_per_request']:.2f} vs {tp['plain_ms_per_request']:.2f} "
                      f"ms; {_pct(tp['answered_by_caches'])} answered by the caches."]
        lines += ["", "Rules kept and their calibration (calibration workload / kinds):", ""]
        for key, c in m["candidates"].items():
            cal = c["calibration"]
            bound = _f(1 - cal["disagreement_ucb"]) if cal.get("feasible") else "n/a"
            lines.append(f"- {key}: {', '.join(c['rules']) or 'none'}; calibration hit rate "
                         f"{_pct(cal.get('hit_rate'))}, agreement {_f(cal.get('agreement'))}, "
                         f"bound {bound}")
        lines += ["", f"![sites](layercache-sites-{name}.png) "
                  f"![frontier](layercache-frontier-{name}.png)"]
    if wan:
        lines += ["", "## Video at 4g, end to end", "", f"Command: `{command_of(wan)}`.", "",
                  "| system | mean ms | p50 ms | p95 ms | accuracy | escalated | answered by "
                  "edge layer caches |", "|---|---|---|---|---|---|---|"]
        for system, r in wan["rows"].items():
            lines.append(f"| {system} | {r['mean_ms']:.2f} | {r['p50_ms']:.2f} | "
                         f"{r['p95_ms']:.2f} | {r['accuracy']:.4f} | "
                         f"{_pct(r['escalation_rate'])} | {_pct(r.get('layer_hits'))} |")
    gpu_file = out / "layercache-throughput.json"
    if gpu_file.exists():
        gpu = json.loads(gpu_file.read_text())
        lines += ["", "## Cloud throughput, bundles as `cachenet-cloud --layer-cache` loads them",
                  "", f"Command: `{command_of(gpu)}`, GPU {machine_of(gpu).get('gpu')}, "
                  f"{machine_of(gpu).get('cpus')} CPUs; frames: a fleet of cameras "
                  "(`--export-frames`), one frame of each camera per batch.", "",
                  "| bundle | full model | device | batch | frames/s without | with | ratio | "
                  "answered by caches |", "|---|---|---|---|---|---|---|---|"]
        for r in gpu["rows"]:
            lines.append(f"| {r['bundle']} | {r['full']} | {r['device']} | {r['batch']} | "
                         f"{r['plain_fps']:.0f} | {r['layered_fps']:.0f} | {r['ratio']:.2f}x | "
                         f"{_pct(r['answered_by_caches'])} |")
    _plots(result, out)
    (out / "layercache.md").write_text("\n".join(lines) + "\n")
