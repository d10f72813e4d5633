"""Nothing accepted is lost, measured: the cloud killed (SIGKILL) in the middle of a stream
of requests to an agent, then restarted.

Requests go to the agent one after another (``policy=cloud``: each would be escalated);
after ``--kill-at`` of them the cloud is killed, and it is started again after
``--restart-at``. Counted: requests sent, answered (and by whom), unanswered; inputs the
agent spooled while the cloud was away, uploaded after the restart (the agent's count
and the cloud's: its ``spooled`` counter, read from its stats log line), dropped.

    python -m bench.outage --bundle bundles/digits [--requests 10000]

Results: ``bench/results/outage.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from bench import provenance
from bench.provenance import ROOT
from cachenet.sim.daemon import Process
from cachenet.sim.fleet import Fleet, FleetConfig
from cachenet.toolchain.data import load_splits


def cloud_spooled(p: Process) -> int:
    """The cloud's own count of spooled inputs it answered, from its stats log line."""
    found = re.findall(r"'spooled': (\d+)", p.log_path.read_text())
    return int(found[-1]) if found else 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--kill-at", type=float, default=0.3, help="share of the requests")
    ap.add_argument("--restart-at", type=float, default=0.6)
    ap.add_argument("--deadline-ms", type=float, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "outage.json")
    args = ap.parse_args(argv)
    provenance.start()
    x = load_splits(args.dataset).test.x
    tmp = Path(tempfile.mkdtemp(prefix="outage-"))
    # No WAN: the agent dials the cloud itself, and finds it on the same port after the
    # restart.
    config = FleetConfig(args.bundle, link=None, workdir=tmp, deadline_ms=args.deadline_ms,
                         agent_ids=("cam-outage",), cloud_args=("--stats-interval", "1"),
                         agent_args=("--spool-dir", str(tmp / "spool")))
    sources: collections.Counter[str] = collections.Counter()
    unanswered = 0
    restarted = False
    started = time.monotonic()
    with Fleet(config) as fleet, fleet.agents[0].client() as client:
        for i in range(args.requests):
            if i == int(args.kill_at * args.requests):
                fleet.stop_cloud(kill=True)
            if i == int(args.restart_at * args.requests):
                fleet.start_cloud()
                restarted = True
            try:
                reply = client.infer(x[i % len(x)], policy="cloud", timeout=10)
                sources[reply["source"]] += 1
            except Exception:
                unanswered += 1
        sent_s = time.monotonic() - started
        spool = client.stats()["spool"]
        deadline = time.monotonic() + 300
        while client.stats()["spool"]["items"] and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.5)  # one more stats line from the cloud
        spool = client.stats()["spool"]
        cloud = fleet.cloud
    out = {"requests": args.requests,
           "answered": sum(sources.values()), "unanswered": unanswered,
           "sources": dict(sources), "sent_s": round(sent_s, 1),
           "spool": spool, "cloud_counted_spooled": cloud_spooled(cloud) if restarted else 0,
           "all_spooled_uploaded": spool["uploaded"] == spool["spooled"]
           and spool["items"] == 0 and spool["rejected"] == 0}
    out = provenance.write(args.out, out, provenance.provenance("bench.outage", argv))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
