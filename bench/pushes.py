"""Twenty pushes under load, ten of them hostile, to an agent that pins the fleet's key.

A real cloud serves the full model; a :class:`~cachenet.sim.hostile.HostileFront`
stands at the agent's ``--cloud`` address, forwards its escalations and control
calls to that cloud, and streams it, while a client keeps the agent busy (every
third request sent to the cloud), 20 pushes alternating good and hostile:

* good: a new version of the bundle, signed by the fleet's key (``cachenet sign``);
* hostile: a bad version (``..``, ``../../victim``), a file past its declared size,
  wrong schemas (``classes`` an integer, nine classes for a ten-class model), an
  unsigned manifest, one signed by another key, an older bundle replayed (rollback),
  a manifest altered after signing, and the cloud's ``full/`` files smuggled in.

Reported: requests sent, answered and failed by source; each push's ack (applied or
the reason it was refused); hostile bundles applied (must be 0); good ones applied
(must be 10); whether the agent is still subscribed at the end; and the versions
that answered requests (no hostile version may appear).

    python -m bench.pushes --bundle bundles/digits

Results: ``bench/results/pushes.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from bench import provenance
from bench.provenance import ROOT
from cachenet.core.bundle import repack
from cachenet.core.signing import generate_keys, load_private_key, sign_bundle
from cachenet.protocol.push import iter_push
from cachenet.protocol.v1 import control_pb2 as pb
from cachenet.sim import hostile as h
from cachenet.sim.fleet import Fleet, FleetConfig
from cachenet.sim.load import Load
from cachenet.toolchain.data import load_splits


def oversize(bundle: Path, push_id: str, key) -> list[pb.PushMessage]:
    """A signed header that declares the real files, then 8 MB more of the model, in
    chunks each valid in itself, at the offsets that follow the declared end."""
    messages = h.signed_push(bundle, push_id, push_id, key)
    entry = next(f for f in messages[0].header.files if f.name.endswith(".onnx"))
    extra = h.raw_push(push_id, "x", {entry.name: b"y" * (8 << 20)}, b"{}")[1:-1]
    for chunk in extra:
        chunk.chunk.offset += entry.size
    last = max(i for i, m in enumerate(messages)
               if m.HasField("chunk") and m.chunk.file == entry.name)
    return [*messages[:last + 1], *extra, *messages[last + 1:]]


def hostile_pushes(bundle: Path, fleet, other) -> list[tuple[str, str, Callable[[], list]]]:
    """(kind, what the refusal must say, the push): each made when it is sent, so it is
    newer than every good push before it and only its own defect can refuse it."""
    m = json.loads((bundle / "manifest.json").read_text())

    def now() -> str:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    nine = {"classes": m["classes"][:9], "output": {**m["output"], "shape": [-1, 9]}}
    if m.get("label_shift"):
        nine["label_shift"] = {**m["label_shift"], "prior": m["label_shift"]["prior"][:9]}

    def tampered() -> list[pb.PushMessage]:
        messages = h.signed_push(bundle, "h-tamper", "h-tamper", fleet)
        forged = json.loads(messages[0].header.manifest_json)
        forged["gate"]["threshold"] = 0.0  # answer everything at the edge
        messages[0].header.manifest_json = json.dumps(forged).encode()
        return messages

    return [
        ("bad version ..", "is not a bundle version",
         lambda: h.hostile(bundle, "h-dotdot", version="..")),
        ("bad version ../../victim", "is not a bundle version",
         lambda: h.hostile(bundle, "h-up", version="../../victim")),
        ("past its declared size", "past its declared",
         lambda: oversize(bundle, "h-big", fleet)),
        ("schema: classes an integer", "'classes' must be a non-empty list",
         lambda: h.signed_push(bundle, "h-int", "h-int", fleet, classes=10,
                               created=now())),
        ("schema: nine classes for a ten-class model", "the manifest needs (1, 9)",
         lambda: h.signed_push(bundle, "h-nine", "h-nine", fleet, **nine,
                               created=now())),
        ("unsigned", "unsigned",
         lambda: h.signed_push(bundle, "h-unsigned", "h-unsigned", None)),
        ("signed by another key", "does not verify",
         lambda: h.signed_push(bundle, "h-other", "h-other", other)),
        ("rollback", "refused as a rollback",
         lambda: h.signed_push(bundle, "h-old", "h-old", fleet,
                               created="2000-01-01T00:00:00Z")),
        ("altered after signing", "does not verify", tampered),
        ("full/ smuggled in", "full/ files",
         lambda: h.signed_push(bundle, "h-full", "h-full", fleet, view=False)),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between pushes")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pushes.json")
    args = ap.parse_args(argv)
    provenance.start()
    x = load_splits(args.dataset).test.x
    tmp = Path(tempfile.mkdtemp(prefix="pushes-"))
    private, public = generate_keys(tmp / "fleet")
    other, _ = generate_keys(tmp / "other")
    fleet_key, other = load_private_key(private), load_private_key(other)
    agent_bundle = repack(args.bundle, tmp / "agent-bundle").root
    sign_bundle(agent_bundle, fleet_key)

    # No WAN: the hostile front stands where it would, between the agent and the cloud.
    config = FleetConfig(args.bundle, agents=0, link=None, workdir=tmp,
                         agent_bundle=agent_bundle, deadline_ms=2000,
                         cloud_args=("--store", str(tmp / "store")),
                         agent_args=("--trusted-key", str(public),
                                     "--spool-dir", str(tmp / "spool")))
    rows: list[dict] = []
    with Fleet(config) as fleet:
        front = h.HostileFront(f"127.0.0.1:{fleet.cloud_port}")
        server, port = h.start_front(front)
        try:
            agent = fleet.start_agent("cam-push", cloud=f"127.0.0.1:{port}")
            load = Load(agent.endpoint, x, cloud_every=3)
            if not front.subscribed.wait(60):
                raise SystemExit("the agent never subscribed")
            with load:
                rows = run_pushes(front, agent_bundle, fleet_key, other, tmp, args.gap)
                stats = agent.stats()
            fleet.stop_agent(agent)  # before its cloud's front goes
        finally:
            server.stop(0)
            front.close()
    hostile_versions = {r["version"] for r in rows if r["hostile"]}
    out = {"requests": load.sent,
           "sources": dict(load.sources), "failed": load.failed,
           "pushes": len(rows), "good_applied": sum(r["applied"] for r in rows
                                                    if not r["hostile"]),
           "hostile_applied": sum(r["applied"] for r in rows if r["hostile"]),
           "refused_for_their_own_defect": sum(r["as_expected"] for r in rows
                                               if r["hostile"]),
           "hostile_versions_that_answered": sorted(hostile_versions & load.versions),
           "still_subscribed": (stats.get("control") or {}).get("state") == "subscribed",
           "model_version": stats["model"]["version"],
           "last_good_version": [r["version"] for r in rows if not r["hostile"]][-1],
           "control": stats.get("control"), "pushes_detail": rows}
    out = provenance.write(args.out, out, provenance.provenance("bench.pushes", argv))
    print(json.dumps({k: v for k, v in out.items() if k != "pushes_detail"}, indent=1))


def run_pushes(front, agent_bundle: Path, fleet, other, tmp: Path, gap: float) -> list[dict]:
    """The 20 pushes, good and hostile in turn, each waited for (its ack) and recorded."""
    rows: list[dict] = []
    bad = hostile_pushes(agent_bundle, fleet, other)
    for n in range(20):
        if n % 2 == 0:
            good = repack(agent_bundle, tmp / f"good-{n}", fields={"name": f"good-{n}"})
            sign_bundle(good.root, fleet)
            kind, expected, version = "good", "", good.version
            messages = list(iter_push(good.root, f"g-{n}"))
        else:
            kind, expected, make = bad[n // 2]
            messages = make()
            version = messages[0].header.version
        front.pushes.put(messages)
        deadline = time.monotonic() + 60
        while len(front.acks) <= n and time.monotonic() < deadline:
            time.sleep(0.05)
        ack = front.acks[n] if len(front.acks) > n else None
        rows.append({"push": n + 1, "kind": kind, "hostile": kind != "good",
                     "version": version, "acked": ack is not None,
                     "applied": bool(ack and ack.applied),
                     "reason": ack.reason if ack else "no ack within 60 s",
                     "expected": expected,
                     "as_expected": bool(ack) and (ack.applied == (kind == "good"))
                     and expected in ack.reason})
        print(json.dumps(rows[-1]), flush=True)
        time.sleep(gap)
    return rows


if __name__ == "__main__":
    main()
