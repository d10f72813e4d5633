"""A hostile or broken cloud cannot destroy a device's data or silently stop its updates.

A :class:`~cachenet.sim.hostile.HostileFront` stands in for the cloud at the agent's
``--cloud`` address and streams pushes a well-behaved cloud never sends; a real agent
process, on loopback, receives them while it serves. Each bad push is refused and acknowledged as
rejected with its reason, nothing outside the state directory is touched, the
agent keeps serving, and the next good push is applied.
"""

from __future__ import annotations

import shutil

import pytest

from cachenet.core.bundle import repack
from cachenet.protocol.push import iter_push
from cachenet.sim.hostile import (
    HostileFront,
    bundle_parts,
    hostile,
    raw_push,
    rehashed,
    start_front,
)
from edge_agent.client import EdgeClient
from tests.processes import Load, start_edge, wait_until


@pytest.fixture
def cloud():
    """A hostile cloud with nothing behind it: (front, port)."""
    front = HostileFront()
    server, port = start_front(front)
    yield front, port
    server.stop(0)
    front.close()


@pytest.fixture
def device(digits_bundle, tmp_path):
    """The agent's disk: its bundle, its default state dir (``.pushed`` beside it), and a
    folder of someone else's beside both."""
    root = tmp_path / "device"
    shutil.copytree(digits_bundle[0], root / "bundle")
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep.txt").write_text("not the agent's")
    return root


def long_name(bundle):
    manifest, files = bundle_parts(bundle)
    files["x" * 300] = b"a file name the file system refuses"
    return raw_push("p-long", "h-long", files, {**rehashed(manifest, files), "version": "h-long"})


def both_file_and_folder(bundle):
    manifest, files = bundle_parts(bundle)
    files = {**files, "a": b"1", "a/b": b"2"}
    return raw_push("p-ab", "h-ab", files, {**rehashed(manifest, files), "version": "h-ab"})


def hostile_pushes(bundle):
    """(messages, what the rejection must say), one per defect."""
    def wrong_classes(m):  # consistent in itself (a prior a class): only the model disagrees
        m["classes"], m["output"]["shape"] = m["classes"][:9], [-1, 9]
        if m.get("label_shift"):
            m["label_shift"]["prior"] = m["label_shift"]["prior"][:9]

    return [
        (hostile(bundle, "p-dotdot", version=".."), "is not a bundle version"),
        (hostile(bundle, "p-dot", version="."), "is not a bundle version"),
        (hostile(bundle, "p-up", version="../../victim"), "is not a bundle version"),
        (hostile(bundle, "p-slash", version="a/b"), "is not a bundle version"),
        (both_file_and_folder(bundle), "also a folder"),
        (long_name(bundle), "cannot install version h-long"),
        (hostile(bundle, "p-int", version="h-int", edit=lambda m: m.update(classes=10)),
         "'classes' must be a non-empty list"),
        (hostile(bundle, "p-nine", version="h-nine", edit=wrong_classes),
         "the manifest needs (1, 9)"),
    ]


def test_bad_pushes_are_refused_and_the_next_good_one_is_applied(cloud, device, tmp_path,
                                                                 digits_splits):
    servicer, port = cloud
    agent = start_edge(device / "bundle", tmp_path, "--cloud", f"127.0.0.1:{port}",
                       "--agent-id", "cam-h")
    try:
        with EdgeClient(agent.info["endpoint"]) as admin, \
                Load(agent.info["endpoint"], digits_splits.test.x[:100], policy="edge") as load:
            before = admin.stats()["model"]["version"]
            assert servicer.subscribed.wait(30)
            bad = hostile_pushes(device / "bundle")
            for n, (messages, reason) in enumerate(bad, start=1):
                servicer.pushes.put(messages)
                wait_until(lambda n=n: len(servicer.acks) >= n)
                ack = servicer.acks[-1]
                assert not ack.applied and reason in ack.reason, (n, ack.reason)
                assert ack.push_id == messages[0].header.push_id
            assert len(servicer.acks) == len(bad)  # one ack a push, not one a chunk
            # A push cut short by the next one: both are answered.
            cut = hostile(device / "bundle", "p-cut", version="h-cut")[:2]
            servicer.pushes.put(cut + hostile(device / "bundle", "p-next", version=".."))
            wait_until(lambda: len(servicer.acks) == len(bad) + 2)
            assert [(a.push_id, a.applied) for a in servicer.acks[-2:]] == [
                ("p-cut", False), ("p-next", False)]
            assert "a new push began" in servicer.acks[-2].reason
            bad += [cut, cut]  # two more rejections in the agent's counts
            assert admin.stats()["model"]["version"] == before  # the old model serves
            good = repack(device / "bundle", tmp_path / "good", {"notes.txt": device / "bundle"
                                                                / "manifest.json"})
            servicer.pushes.put(list(iter_push(good.root, "p-good")))
            wait_until(lambda: len(servicer.acks) == len(bad) + 1)
            assert servicer.acks[-1].applied, servicer.acks[-1].reason
            wait_until(lambda: admin.stats()["model"]["version"] == good.version)
            control = admin.stats()["control"]
        assert (control["state"], control["rejected"], control["applied"]) == (
            "subscribed", len(bad), 1)
        assert "is not a bundle version" in control["last_error"]  # p-next, the last refused
        assert load.failed == 0 and load.ok == load.sent
    finally:
        assert agent.stop() == 0
    # Nothing outside the state directory was touched.
    assert (tmp_path / "victim" / "keep.txt").read_text() == "not the agent's"
    assert repack(device / "bundle", tmp_path / "again").version == before
    state = device / ".pushed"
    assert sorted(p.name for p in state.iterdir()) == [good.version]
