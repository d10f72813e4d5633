"""Nothing accepted is lost: what the agent answers while the cloud is away is spooled on
disk, survives the agent's crash, and reaches the cloud when it is back, counted."""

from __future__ import annotations

import socket
import time

import numpy as np

from edge_agent.client import EdgeClient
from edge_agent.spool import TMP, Spool
from tests.processes import start_cloud, start_edge, wait_until

X = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8) / 64


def test_items_come_back_oldest_first_and_leave_when_done(tmp_path):
    spool = Spool(tmp_path)
    for label in range(3):
        spool.add(X + label, label, "v1")
    first = spool.oldest()
    assert first is not None and first.label == 0 and np.array_equal(first.x, X)
    spool.done(first, cloud_label=0)
    second = spool.oldest()
    spool.done(second, cloud_label=9)
    spool.done(spool.oldest(), cloud_label=None)  # the cloud refused it
    assert len(spool) == 0 and spool.oldest() is None
    snap = spool.snapshot()
    assert (snap["spooled"], snap["uploaded"], snap["agreed"], snap["rejected"]) == (3, 2, 1, 1)
    assert snap["items"] == 0 and snap["bytes"] == 0


def test_the_spool_is_bounded_by_items_bytes_and_age(tmp_path):
    spool = Spool(tmp_path / "a", max_items=2)
    for label in range(5):
        spool.add(X, label, "v")
    assert len(spool) == 2 and spool.snapshot()["dropped_full"] == 3
    assert spool.oldest().label == 3  # the oldest went first
    small = Spool(tmp_path / "b", max_bytes=1)
    small.add(X, 0, "v")
    assert len(small) == 0 and small.snapshot()["dropped_full"] == 1
    old = Spool(tmp_path / "c", max_age_s=1e-9)
    old.add(X, 0, "v")
    time.sleep(0.01)
    assert old.oldest() is None and old.snapshot()["dropped_age"] == 1


def test_a_crash_leaves_whole_items_and_a_new_run_takes_them_up(tmp_path):
    spool = Spool(tmp_path)
    spool.add(X, 7, "v")
    (tmp_path / f"{TMP}000000000009-1.npz").write_bytes(b"half a write")
    (tmp_path / "000000000005-1.npz").write_bytes(b"not an npz")
    again = Spool(tmp_path)
    assert not list(tmp_path.glob(f"{TMP}*"))  # the cut-short write is gone
    item = again.oldest()
    assert item is not None and item.label == 7
    again.done(item, 7)
    assert again.oldest() is None and again.snapshot()["unreadable"] == 1
    again.add(X, 8, "v")  # numbering goes on after what was there
    assert [p.name[:12] for p in tmp_path.glob("*.npz")] == ["000000000006"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_inputs_answered_while_the_cloud_is_down_reach_it_after_a_crash_and_a_restart(
        digits_bundle, digits_splits, tmp_path):
    port = free_port()
    spool = tmp_path / "spool"
    args = ["--cloud", f"127.0.0.1:{port}", "--deadline-ms", "300", "--spool-dir", str(spool),
            "--agent-id", "cam-s"]
    unsure = digits_splits.test.x[:40]
    agent = start_edge(digits_bundle[0], tmp_path, *args)
    try:
        with EdgeClient(agent.info["endpoint"]) as client:
            replies = [client.infer(x, policy="cloud", timeout=10) for x in unsure[:12]]
            assert all(r["ok"] and r["source"] == "edge-fallback" for r in replies)
            wait_until(lambda: client.stats()["spool"]["spooled"] == 12, timeout=30)
    finally:
        agent.proc.kill()  # a crash: no shutdown, no flush
        agent.proc.wait(10)
    agent = start_edge(digits_bundle[0], tmp_path, *args)
    cloud = None
    try:
        with EdgeClient(agent.info["endpoint"]) as client:
            assert client.stats()["spool"]["items"] == 12  # still there after the crash
            cloud = start_cloud(digits_bundle[0], tmp_path, "--port", str(port))
            wait_until(lambda: client.stats()["spool"]["uploaded"] == 12, timeout=60)
            snap = client.stats()["spool"]
            assert snap["items"] == 0 and snap["rejected"] == 0 and 0 <= snap["agreed"] <= 12
            assert client.infer(unsure[20], policy="cloud", timeout=10)["source"] == "cloud"
    finally:
        assert agent.stop() == 0
        if cloud is not None:
            assert cloud.stop() == 0


def test_the_cloud_counts_what_comes_from_a_spool():
    import grpc

    from cachenet.protocol.client import make_request
    from cachenet.protocol.v1 import inference_pb2_grpc as pb_grpc
    from tests.generating import serve

    with serve(None) as s, grpc.insecure_channel(s.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        stub.Infer(make_request(X, spooled=True), timeout=10)
        stub.Infer(make_request(X), timeout=10)
        assert s.parts.service.counts["spooled"] == 1
        assert s.parts.service.counts["ok"] == 2

