"""An agent that pins the fleet's key: a real process, pushed to by a hostile cloud.

Unsigned pushes, pushes signed by another key and old bundles replayed are refused with
their reason; the agent stays subscribed and serving, and a properly signed newer
bundle is applied. It will not start on a bundle the key does not verify.
"""

from __future__ import annotations

import json

import pytest

from cachenet.core.bundle import repack
from cachenet.core.signing import generate_keys, load_private_key, sign_bundle, sign_manifest
from cachenet.exceptions import CachenetError
from cachenet.protocol.push import iter_push
from cachenet.sim.hostile import raw_push, rehashed, signed_push
from edge_agent.client import EdgeClient
from tests.edge_agent.test_hostile_push import cloud, device  # noqa: F401
from tests.processes import Load, start_edge, wait_until


@pytest.fixture
def keys(tmp_path):
    fleet, fleet_pub = generate_keys(tmp_path / "fleet")
    other, _ = generate_keys(tmp_path / "other")
    return load_private_key(fleet), fleet_pub, load_private_key(other)


def test_only_newer_bundles_signed_by_the_fleet_are_applied(cloud, device, keys,  # noqa: F811
                                                            tmp_path, digits_splits):
    servicer, port = cloud
    fleet, public, other = keys
    sign_bundle(device / "bundle", fleet)
    agent = start_edge(device / "bundle", tmp_path, "--cloud", f"127.0.0.1:{port}",
                       "--agent-id", "cam-t", "--trusted-key", str(public))
    try:
        with EdgeClient(agent.info["endpoint"]) as admin, \
                Load(agent.info["endpoint"], digits_splits.test.x[:100], policy="edge") as load:
            before = admin.stats()["model"]["version"]
            assert servicer.subscribed.wait(30)
            bundle = device / "bundle"
            bad = [(signed_push(bundle, "p-unsigned", "t-unsigned", None), "unsigned"),
                   (signed_push(bundle, "p-other", "t-other", other), "does not verify"),
                   (signed_push(bundle, "p-old", "t-old", fleet, created="2000-01-01T00:00:00Z"),
                    "refused as a rollback"),
                   (signed_push(bundle, "p-full", "t-full", fleet, view=False),
                    "full/ files, which the signature does not cover")]
            tampered = signed_push(bundle, "p-tamper", "t-tamper", fleet)
            header = tampered[0].header
            forged = json.loads(header.manifest_json)
            forged["gate"]["threshold"] = 0.0  # answer everything at the edge
            header.manifest_json = json.dumps(forged).encode()
            bad.append((tampered, "does not verify"))
            for n, (messages, reason) in enumerate(bad, start=1):
                servicer.pushes.put(messages)
                wait_until(lambda n=n: len(servicer.acks) >= n)
                ack = servicer.acks[-1]
                assert not ack.applied and reason in ack.reason, (n, ack.reason)
            assert admin.stats()["model"]["version"] == before
            good = repack(bundle, tmp_path / "good")
            sign_bundle(good.root, fleet)
            servicer.pushes.put(list(iter_push(good.root, "p-good")))
            wait_until(lambda: len(servicer.acks) == len(bad) + 1)
            assert servicer.acks[-1].applied, servicer.acks[-1].reason
            wait_until(lambda: admin.stats()["model"]["version"] == good.version)
        assert load.failed == 0 and load.ok > 0
    finally:
        assert agent.stop() == 0
    # The mark outlives the agent: restarted on its first bundle, it still refuses a
    # signed bundle older than the one it had accepted.
    older = repack(device / "bundle", tmp_path / "older", fields={"name": "older"})
    sign_bundle(older.root, fleet)
    servicer.subscribed.clear()
    agent = start_edge(device / "bundle", tmp_path, "--cloud", f"127.0.0.1:{port}",
                       "--agent-id", "cam-t", "--trusted-key", str(public))
    try:
        assert servicer.subscribed.wait(30)
        before = len(servicer.acks)
        with open(older.root / "manifest.json") as f:
            m = json.load(f)
        m["created"] = "2001-01-01T00:00:00Z"  # older than the good push, newer than the first
        files = {n: (older.root / n).read_bytes() for n in m["files"]
                 if not n.startswith("full/")}
        m = sign_manifest({**rehashed({**m, "full_model": None}, files),
                           "version": "t-replay"}, fleet)
        servicer.pushes.put(raw_push("p-replay", "t-replay", files, m))
        wait_until(lambda: len(servicer.acks) == before + 1)
        assert not servicer.acks[-1].applied
        assert "refused as a rollback" in servicer.acks[-1].reason
    finally:
        assert agent.stop() == 0


def test_the_agent_will_not_start_on_a_bundle_its_key_does_not_verify(device, keys,  # noqa: F811
                                                                      tmp_path):
    _, public, other = keys
    with pytest.raises(CachenetError, match="unsigned"):
        start_edge(device / "bundle", tmp_path, "--trusted-key", str(public))
    sign_bundle(device / "bundle", other)
    with pytest.raises(CachenetError, match="does not verify"):
        start_edge(device / "bundle", tmp_path, "--trusted-key", str(public))
