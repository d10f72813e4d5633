#!/usr/bin/env python
"""Nothing accepted is lost, measured: the cloud killed (SIGKILL) in the middle of a stream
of requests to an agent, then restarted.

Requests go to the agent one after another (``policy=cloud``: each would be escalated);
after ``--kill-at`` of them the cloud is killed, and it is started again after
``--restart-at``. Counted: requests sent, answered (and by whom), unanswered; inputs the
agent spooled while the cloud was away, uploaded after the restart (the agent's count
and the cloud's: its ``spooled`` counter, read from its stats log line), dropped.

    python bench/outage.py --bundle bundles/digits [--requests 10000]

Results: ``bench/results/outage.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cachenet.sim.daemon import Process  # noqa: E402
from cachenet.toolchain.data import load_splits  # noqa: E402
from edge_agent.client import EdgeClient  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cloud(bundle: Path, port: int, tmp: Path, tag: str) -> Process:
    p = Process("cloud_server", ["--bundle", str(bundle), "--port", str(port),
                                 "--stats-interval", "1"], tmp, tag=tag)
    p.wait_ready(120)
    return p


def cloud_spooled(p: Process) -> int:
    """The cloud's own count of spooled inputs it answered, from its stats log line."""
    found = re.findall(r"'spooled': (\d+)", p.log_path.read_text())
    return int(found[-1]) if found else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--kill-at", type=float, default=0.3, help="share of the requests")
    ap.add_argument("--restart-at", type=float, default=0.6)
    ap.add_argument("--deadline-ms", type=float, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "outage.json")
    args = ap.parse_args()
    x = load_splits(args.dataset).test.x
    tmp = Path(tempfile.mkdtemp(prefix="outage-"))
    port = free_port()
    first = cloud(args.bundle, port, tmp, "-1")
    agent = Process("edge_agent", ["--bundle", str(args.bundle), "--bind", "tcp://127.0.0.1:0",
                                   "--cloud", f"127.0.0.1:{port}", "--deadline-ms",
                                   str(args.deadline_ms), "--spool-dir", str(tmp / "spool"),
                                   "--agent-id", "cam-outage"], tmp)
    agent.wait_ready(120)
    sources: collections.Counter[str] = collections.Counter()
    unanswered = 0
    second = None
    started = time.monotonic()
    try:
        with EdgeClient(agent.info["endpoint"]) as client:
            for i in range(args.requests):
                if i == int(args.kill_at * args.requests):
                    first.proc.kill()
                    first.proc.wait(10)
                if i == int(args.restart_at * args.requests):
                    second = cloud(args.bundle, port, tmp, "-2")
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
    finally:
        agent.stop()
        if second is not None:
            time.sleep(0.1)
            second.stop()
    out = {"command": " ".join(sys.argv), "requests": args.requests,
           "answered": sum(sources.values()), "unanswered": unanswered,
           "sources": dict(sources), "sent_s": round(sent_s, 1),
           "spool": spool, "cloud_counted_spooled": cloud_spooled(second) if second else 0,
           "all_spooled_uploaded": spool["uploaded"] == spool["spooled"]
           and spool["items"] == 0 and spool["rejected"] == 0}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
