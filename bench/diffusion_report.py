"""``bench/results/diffusion.md`` and its plots from ``python -m bench.diffusion measure``'s JSON.

Every figure in the report is read off the JSON: the goals of the issue are checked
row by row, and each step cache is compared with DDIM with fewer steps at the same
MACs (FID interpolated linearly in MACs between the measured step counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import provenance
from cachenet.diffusion.generate import image_grid

GRID_ROWS = {"unet": ["none", "deepcache-3", "ddim-20"], "dit": ["none", "fora-3", "l2c-0.5"]}


def _label(r: dict) -> str:
    p = r["params"]
    if r["policy"] == "ddim-steps":
        return f"DDIM {p['steps']} steps"
    if not p:
        return {"none": "uncached", "none-other-noise": "uncached, other noise"}[r["policy"]]
    return r["policy"] + " " + ", ".join(f"{k}={v}" for k, v in p.items())


def ddim_fid_at(rows: list[dict], arch: str, macs: float) -> float:
    """FID of DDIM with fewer steps at ``macs``, linear between measured step counts."""
    pts = sorted((r["macs_per_image"], r["fid"]) for r in rows if r["arch"] == arch
                 and r["policy"] in ("ddim-steps", "none"))
    return float(np.interp(macs, [m for m, _ in pts], [f for _, f in pts]))


def table(rows: list[dict], arch: str) -> list[str]:
    out = ["| configuration | GMACs/image | MACs speed-up | layers skipped | ms/image | "
           "wall speed-up | FID | FID change | DDIM FID at same MACs | PSNR vs uncached (dB) | "
           "classifier agreement |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["arch"] != arch:
            continue
        ddim = ddim_fid_at(rows, arch, r["macs_per_image"])
        cached = r["policy"] not in ("none", "none-other-noise", "ddim-steps")
        out.append(
            f"| {_label(r)} | {r['gmacs_per_image']:.2f} | {r['macs_speedup']:.2f}x | "
            f"{100 * r['layers_skipped']:.1f}% | {r['wall_ms_per_image']:.3f} | "
            f"{r['wall_speedup']:.2f}x | {r['fid']:.3f} | {100 * r['fid_rel']:+.1f}% | "
            f"{f'{ddim:.3f}' if cached else ''} | "
            f"{'' if r['psnr_vs_uncached'] is None else r['psnr_vs_uncached']} | "
            f"{r['agreement_vs_uncached']:.3f} |")
    return out


def goals(rows: list[dict]) -> list[str]:
    def best(pred: object, key: object, arch: str, policies: tuple) -> dict | None:
        cand = [r for r in rows if r["arch"] == arch and r["policy"] in policies and pred(r)]
        return max(cand, key=key) if cand else None

    lines = []
    dc = [r for r in rows if r["policy"] == "deepcache"]
    hit = best(lambda r: r["macs_speedup"] >= 2 and r["wall_speedup"] >= 1.8
               and r["fid_rel"] <= 0.10, lambda r: r["macs_speedup"], "unet", ("deepcache",))
    near = min((r for r in dc if r["macs_speedup"] >= 2), key=lambda r: r["fid_rel"],
               default=None)
    lines.append("- **DeepCache, >= 2x fewer MACs and >= 1.8x less wall time at <= 10% FID "
                 f"increase: {'met by ' + _label(hit) if hit else 'missed'}.**")
    if near and not hit:
        lines.append(f"  Closest at >= 2x: {_label(near)}, {near['macs_speedup']:.2f}x MACs, "
                     f"{near['wall_speedup']:.2f}x wall, FID {100 * near['fid_rel']:+.1f}%.")
    best_dc = best(lambda r: r["fid_rel"] <= 0.10, lambda r: r["macs_speedup"], "unet",
                   ("deepcache",))
    if best_dc:
        lines.append(f"  Fastest within 10%: {_label(best_dc)}, {best_dc['macs_speedup']:.2f}x "
                     f"MACs, {best_dc['wall_speedup']:.2f}x wall, FID "
                     f"{100 * best_dc['fid_rel']:+.1f}%.")
    wins = [r for r in dc if r["fid"] < ddim_fid_at(rows, "unet", r["macs_per_image"])]
    lines.append(f"- **DeepCache below DDIM with fewer steps at the same MACs: {len(wins)} of "
                 f"{len(dc)} configurations.**")
    l2c = [r for r in rows if r["policy"] == "l2c"]
    hit = best(lambda r: r["layers_skipped"] >= 0.40 and r["fid_rel"] <= 0.05,
               lambda r: r["layers_skipped"], "dit", ("l2c",))
    lines.append("- **L2C, >= 40% of the layers' computation removed at <= 5% FID increase: "
                 f"{'met by ' + _label(hit) if hit else 'missed'}.**")
    base = next((b for b in rows if b["arch"] == "dit" and b["policy"] == "none"), None)
    fora = [(f["macs_per_image"], f["fid"]) for f in rows if f["policy"] == "fora"]
    pts = sorted(fora + ([(base["macs_per_image"], base["fid"])] if base else []))
    for r in l2c:
        fora_at = float(np.interp(r["macs_per_image"], [m for m, _ in pts],
                                  [f for _, f in pts]))
        ddim_at = ddim_fid_at(rows, "dit", r["macs_per_image"])
        lines.append(f"  {_label(r)}: {100 * r['layers_skipped']:.1f}% skipped, FID "
                     f"{100 * r['fid_rel']:+.1f}% ({r['fid']:.3f}); FORA at the same MACs "
                     f"{fora_at:.3f}, DDIM with fewer steps {ddim_at:.3f}.")
    return lines


def why(rows: list[dict], models: dict) -> list[str]:
    """The reading of the misses, with the figures it rests on."""
    def fid(arch: str, policy: str, **params: object) -> dict | None:
        return next((r for r in rows if r["arch"] == arch and r["policy"] == policy
                     and all(r["params"].get(k) == v for k, v in params.items())), None)

    u20, d20 = fid("unet", "ddim-steps", steps=20), fid("dit", "ddim-steps", steps=20)
    dc3 = fid("unet", "deepcache", interval=3, branch=0)
    l2c = [r for r in rows if r["policy"] == "l2c"]
    if not (u20 and d20 and dc3 and l2c):
        return []
    centres = [(r["params"].get("center", 0.3), r) for r in rows if r["policy"] == "deepcache"
               and r["params"].get("mode") == "nonuniform" and r["params"]["interval"] == 3]
    centres = [("uniform", dc3), *sorted(centres, key=lambda cr: cr[0])]
    spans = [r["layers_skipped"] for r in l2c]
    router = (models.get("dit", {}).get("l2c") or {}).get("config", {})
    return [
        "- **The models are two minutes old.** Each was trained for 130 s (about 2,000 "
        "optimizer steps; papers train for days), so the network's own error dominates the "
        "sampler's: DDIM with 20 steps instead of 50 costs the U-Net only "
        f"{100 * u20['fid_rel']:+.1f}% FID and changes the DiT's by "
        f"{100 * d20['fid_rel']:+.1f}%. A step cache trades discretisation for staleness; "
        "where fewer steps lose almost nothing, dropping steps is the better trade, and no "
        "cache beats the fewer-step frontier. DeepCache's and L2C's comparisons are on "
        "converged models, often with longer samplers, where fewer steps lose more. "
        "Closing it: train the reference models for hours (the same `cachenet diffusion "
        "train` with `--budget`), and measure at 100 steps too.",
        "- **DeepCache's shallow path is cheap, its staleness is not.** At branch 0, "
        f"`interval=3` already skips {100 * dc3['layers_skipped']:.0f}% of the layers' "
        f"MACs at {100 * dc3['fid_rel']:+.1f}% FID: the quality is lost to the deep "
        "features held for two steps, not to the cost of the shallow path. The non-uniform "
        "schedule beats the uniform one only with its full steps late in sampling ("
        + ", ".join(f"{c if c == 'uniform' else f'centre {c}'}: {100 * r['fid_rel']:+.1f}%"
                    for c, r in centres)
        + "); a centre search and a learned schedule per step (L2C's idea, on the U-Net) "
        "are the next things to try.",
        "- **One router, one lambda.** L2C's router was trained once (lambda "
        f"{router.get('lam')}, {router.get('iters')} iterations, every "
        f"{'other' if router.get('period') == 2 else str(router.get('period')) + 'th'} "
        f"step a cache step); its thresholds span {100 * min(spans):.0f}-"
        f"{100 * max(spans):.0f}% of the layers removed. A sweep of lambda, more "
        "iterations, and cache steps that may follow each other (period 1) would move the "
        "frontier. The FID noise between two draws of the same sampler (below) is of the "
        "size of the differences between L2C and FORA here, so those are ties.",
    ]


def grids(results: Path) -> list[str]:
    from PIL import Image, ImageDraw

    written = []
    for arch, names in GRID_ROWS.items():
        path = results.with_name(f"diffusion-grids-{arch}.npz")
        if not path.exists():
            continue
        with np.load(path) as f:
            blocks = [(n, image_grid(f[n][:20], cols=10)) for n in names if n in f.files]
        scale = 3
        parts = []
        for name, g in blocks:
            img = Image.fromarray(g).resize((g.shape[1] * scale, g.shape[0] * scale),
                                            Image.NEAREST)
            canvas = Image.new("RGB", (img.width + 110, img.height), "white")
            canvas.paste(img, (110, 0))
            ImageDraw.Draw(canvas).text((4, img.height // 2 - 6), name, fill="black")
            parts.append(canvas)
        if not parts:
            continue
        full = Image.new("RGB", (parts[0].width, sum(p.height + 6 for p in parts)), "white")
        y = 0
        for p in parts:
            full.paste(p, (0, y))
            y += p.height + 6
        out = results.with_name(f"diffusion-grid-{arch}.png")
        full.save(out)
        written.append(out.name)
    return written


def frontier(rows: list[dict], results: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, arch in zip(axes, ("unet", "dit"), strict=True):
        mine = [r for r in rows if r["arch"] == arch]
        groups: dict[str, list[dict]] = {}
        for r in mine:
            key = r["policy"]
            if r["policy"] == "deepcache":
                key = (f"deepcache b{r['params'].get('branch', 0)} "
                       f"{r['params'].get('mode', 'uniform')}")
                if "center" in r["params"] or "full_last" in r["params"]:
                    key = "deepcache variants"
            groups.setdefault(key, []).append(r)
        base = next(r for r in mine if r["policy"] == "none")
        for key, rs in groups.items():
            if key == "none-other-noise":
                continue
            if key == "ddim-steps":
                rs = [*rs, base]
            rs = sorted(rs, key=lambda r: r["macs_per_image"])
            style = "o" if key in ("none", "deepcache variants") else "o-"
            ax.plot([r["gmacs_per_image"] for r in rs], [r["fid"] for r in rs], style,
                    label="uncached DDIM-50" if key == "none" else
                    "DDIM, fewer steps" if key == "ddim-steps" else key)
        ax.axhline(base["fid"] * 1.10 if arch == "unet" else base["fid"] * 1.05, ls=":",
                   c="grey", label="goal's FID bound")
        ax.set_xlabel("GMACs per image")
        ax.set_ylabel("FID (ResNet-20 features, 2,000 samples)")
        ax.set_title(f"{arch}: quality against compute")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = results.with_name("diffusion-frontier.png")
    fig.savefig(out, dpi=110)
    return out.name


def report(results: Path) -> Path:
    d = json.loads(results.read_text())
    rows = d["rows"]
    models = d["models"]
    lines = ["# Step caches for diffusion models", "",
             f"Measured by `{provenance.command_of(d)}` on {d['device_name']} "
             f"(torch {d['torch']}), "
             f"{d['samples']} class-balanced samples per configuration, batches of "
             f"{d['batch']}, DDIM with {d['steps']} steps unless stated; every configuration "
             "starts from the same noise. FID is computed on the penultimate features of "
             f"the CIFAR-10 ResNet-20 trained here (`{d['judge']}`) against the 10,000 test "
             "images; 2,000 training images score "
             f"{d['fid_floor_real_train_vs_test']:.3f} (the floor). Absolute values are not "
             "comparable with Inception FIDs; differences between rows are."
             + (f" {d['note']}" if d.get("note") else ""), "",
             "## Models", ""]
    for arch, m in models.items():
        t = m["meta"].get("training", {})
        lines.append(f"- **{arch}**: {m['params_m']} M parameters, {m['gmacs_per_step']} GMACs "
                     f"per step; trained {t.get('steps')} steps ({t.get('epochs')} epochs of "
                     f"the 50,000 training images, batch {t.get('config', {}).get('batch_size')})"
                     f" in {t.get('elapsed_s')} s on {t.get('device')} (budget "
                     f"{t.get('time_budget_s')} s).")
    lines += ["", "## Goals", "", *goals(rows)]
    lines += ["", "### Why, and what would close it", "", *why(rows, models)]
    noise = {r["arch"]: r for r in rows if r["policy"] == "none-other-noise"}
    chance = ", ".join(f"{a} {100 * r['fid_rel']:+.1f}%" for a, r in noise.items())
    lines += ["", "FID moves by chance too: the uncached sampler from other noise scores "
              f"{chance} against the same sampler from the benchmark's noise.", ""]
    for arch in ("unet", "dit"):
        lines += [f"## {arch}", "", *table(rows, arch), ""]
        if arch in d.get("baseline_wall_ms", {}):
            a, b = d["baseline_wall_ms"][arch]
            lines += [f"The uncached sampler took {a} ms per image at the start of the "
                      f"{arch} runs and {b} ms at their end.", ""]
    if d.get("skipped"):
        lines += ["Not measured (deadline): " + ", ".join(
            f"{s['arch']} {s['policy']} {s.get('params', '')}" for s in d["skipped"]), ""]
    serving = results.with_name("diffusion-serving.json")
    if serving.exists():
        sv = json.loads(serving.read_text())
        b = max(sv["median_images_per_s"], key=int)
        lines += ["## Serving: batching generations", "",
                  f"`{provenance.command_of(sv)}` on the {sv['device']} ({sv.get('cpus')} cores, "
                  f"{sv.get('torch_threads')} torch threads): a burst of {sv['requests']} "
                  f"one-image requests ({sv['steps']} steps, policy {sv['policy']}) "
                  "through the generation service's queue, "
                  f"{sv['rounds']} rounds alternated. One request per sampler run: "
                  f"{sv['median_images_per_s']['1']} images/s; batched (up to {b} images, "
                  f"{sv['batches_per_burst'][b]} runs a burst): "
                  f"{sv['median_images_per_s'][b]} images/s, **{sv['speedup']}x**.", ""]
    plot = frontier(rows, results)
    pics = grids(results)
    if plot:
        lines += [f"![quality against MACs]({plot})", ""]
    lines += [f"![samples]({p})" for p in pics]
    out = results.with_suffix(".md")
    out.write_text("\n".join(lines) + "\n")
    return out
