#!/usr/bin/env python
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

    python bench/pushes.py --bundle bundles/digits

Results: ``bench/results/pushes.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cachenet.core.bundle import repack  # noqa: E402
from cachenet.core.signing import generate_keys, load_private_key, sign_bundle  # noqa: E402
from cachenet.protocol.push import iter_push  # noqa: E402
from cachenet.protocol.v1 import control_pb2 as pb  # noqa: E402
from cachenet.sim import hostile as h  # noqa: E402
from cachenet.sim.daemon import Process  # noqa: E402
from cachenet.sim.load import Load  # noqa: E402
from cachenet.toolchain.data import load_splits  # noqa: E402
from edge_agent.client import EdgeClient  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between pushes")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pushes.json")
    args = ap.parse_args()
    x = load_splits(args.dataset).test.x
    tmp = Path(tempfile.mkdtemp(prefix="pushes-"))
    private, public = generate_keys(tmp / "fleet")
    other, _ = generate_keys(tmp / "other")
    fleet, other = load_private_key(private), load_private_key(other)
    agent_bundle = repack(args.bundle, tmp / "agent-bundle").root
    sign_bundle(agent_bundle, fleet)

    cloud = Process("cloud_server", ["--bundle", str(args.bundle), "--port", "0",
                                     "--store", str(tmp / "store")], tmp)
    cloud.wait_ready(120)
    front = h.HostileFront(f"127.0.0.1:{cloud.info['port']}")
    server, port = h.start_front(front)
    agent = Process("edge_agent", [
        "--bundle", str(agent_bundle), "--bind", "tcp://127.0.0.1:0",
        "--cloud", f"127.0.0.1:{port}", "--agent-id", "cam-push", "--deadline-ms", "2000",
        "--trusted-key", str(public), "--spool-dir", str(tmp / "spool")], tmp)
    agent.wait_ready(120)
    load = Load(agent.info["endpoint"], x, cloud_every=3)
    rows: list[dict] = []
    try:
        if not front.subscribed.wait(60):
            raise SystemExit("the agent never subscribed")
        load.__enter__()
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
            time.sleep(args.gap)
        with EdgeClient(agent.info["endpoint"]) as client:
            stats = client.stats()
    finally:
        load.__exit__()
        agent.stop()
        server.stop(0)
        front.close()
        cloud.stop()
    hostile_versions = {r["version"] for r in rows if r["hostile"]}
    out = {"command": " ".join(sys.argv), "requests": load.sent,
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "pushes_detail"}, indent=1))


if __name__ == "__main__":
    main()
