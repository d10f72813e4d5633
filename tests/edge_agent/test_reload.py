"""Swapping the cache model under load: SIGHUP reloads, nothing is dropped, bad bundles refused."""

from __future__ import annotations

import shutil
import signal

import pytest

from cachenet.core.bundle import repack
from edge_agent.client import EdgeClient
from tests.processes import Load, start_edge
from tests.processes import wait_until as wait_for


def rewrite(live, source, extra=None):
    """Atomically replace the bundle at ``live`` with ``source`` (plus ``extra`` files)."""
    return repack(source, live, extra).version


@pytest.fixture
def live(digits_bundle, tmp_path):
    path = tmp_path / "live"
    shutil.copytree(digits_bundle[0], path)
    return path


def test_twenty_reloads_under_continuous_load_lose_nothing(live, digits_bundle,
                                                           digits_splits, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("variant B: same model, another version")
    agent = start_edge(live, tmp_path)
    try:
        with EdgeClient(agent.info["endpoint"]) as admin, \
                Load(agent.info["endpoint"], digits_splits.test.x[:300], policy="edge",
                     timeout=5) as load:
            for n in range(20):
                version = rewrite(live, digits_bundle[0], {"notes.txt": notes} if n % 2 == 0
                                  else None)
                served_before = load.ok
                agent.proc.send_signal(signal.SIGHUP)
                wait_for(lambda v=version: admin.stats()["model"]["version"] == v)
                wait_for(lambda s=served_before: load.ok > s + 5)  # serving throughout
            reloads = admin.stats()["reloads"]
    finally:
        assert agent.stop() == 0
    assert load.failed == 0
    assert reloads["applied"] == 20 and reloads["rejected"] == 0
    assert len(load.versions) == 2 and load.ok > 200


@pytest.mark.parametrize("damage", ["bit flip", "truncated", "hash mismatch"])
def test_damaged_bundle_is_rejected_and_the_old_model_keeps_answering(
        live, digits_splits, tmp_path, damage):
    agent = start_edge(live, tmp_path)
    try:
        with EdgeClient(agent.info["endpoint"]) as c:
            before = c.stats()["model"]["version"]
            model = live / "model.onnx"
            data = bytearray(model.read_bytes())
            if damage == "bit flip":
                data[len(data) // 3] ^= 0x10
            elif damage == "truncated":
                data = data[: len(data) // 2]
            model.write_bytes(bytes(data))
            if damage == "hash mismatch":
                import json
                m = json.loads((live / "manifest.json").read_text())
                m["files"]["canary.npz"]["sha256"] = "0" * 64
                (live / "manifest.json").write_text(json.dumps(m))
            agent.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: c.stats()["reloads"]["rejected"] == 1)
            reply = c.stats()
            assert reply["model"]["version"] == before
            assert "IntegrityError" in reply["reloads"]["last_error"]
            answer = c.infer(digits_splits.test.x[0], timeout=5)
            assert answer["ok"] and answer["versions"]["cache"] == before
    finally:
        assert agent.stop() == 0
