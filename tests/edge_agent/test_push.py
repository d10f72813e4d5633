"""Model push over the control plane: chunks verified, bundles installed, agents updated."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil

from cachenet.core.bundle import repack, verify_bundle
from cachenet.fleet.store import ModelStore
from cachenet.sim.wan import LinkProfile, ProxyThread
from edge_agent.client import EdgeClient
from tests.processes import Load, start_cloud, start_edge
from tests.processes import wait_until as wait_for


def variant(source, dest, note: str):
    """The same model as ``source`` with one extra file: another bundle version per note."""
    extra = dest.parent / f"{dest.name}.txt"
    extra.write_text(note)
    repack(source, dest, {"notes.txt": extra})
    return dest


@contextlib.contextmanager
def pushing(bundle, tmp_path):
    """A cloud with a model store, the WAN proxy, and agent cam-1 running a copy of
    ``bundle``: (store, proxy, cloud, the agent's bundle folder, its client)."""
    store = ModelStore(tmp_path / "store")
    live = tmp_path / "agent" / "bundle"
    shutil.copytree(bundle, live)
    cloud = start_cloud(bundle, tmp_path, "--store", str(tmp_path / "store"))
    proxy = ProxyThread(("127.0.0.1", cloud.info["port"]), LinkProfile())
    proxy.start()
    agent = start_edge(live, tmp_path, "--cloud", f"127.0.0.1:{proxy.port}",
                       "--agent-id", "cam-1")
    try:
        with EdgeClient(agent.info["endpoint"]) as c:
            yield store, proxy, cloud, live, c
    finally:
        assert agent.stop() == 0
        proxy.stop()
        assert cloud.stop() == 0


def test_cloud_pushes_a_new_version_and_the_agent_swaps_it_in(digits_bundle, digits_splits,
                                                              tmp_path):
    with pushing(digits_bundle[0], tmp_path) as (store, proxy, cloud, live, c):
        store.push(digits_bundle[0])  # what the agent runs: nothing to push
        first = c.stats()["model"]["version"]
        b = variant(digits_bundle[0], tmp_path / "b", "version B")
        pushed = store.push(b, agent="cam-1")
        assert pushed.version != first
        wait_for(lambda: c.stats()["model"]["version"] == pushed.version)
        assert c.stats()["reloads"]["applied"] == 1
        assert c.infer(digits_splits.test.x[0])["versions"]["cache"] == pushed.version
        # The link goes down; a version pushed meanwhile arrives after it heals.
        proxy.configure(dataclasses.replace(LinkProfile(), drop=True))
        d = variant(digits_bundle[0], tmp_path / "d", "version D")
        later = store.push(d, agent="cam-1")
        proxy.configure(LinkProfile())
        wait_for(lambda: c.stats()["model"]["version"] == later.version)
        assert c.stats()["reloads"]["rejected"] == 0
    log = cloud.log_path.read_text()
    assert f"agent cam-1 applied {pushed.version}" in log
    assert (live.parent / ".pushed" / later.version / "manifest.json").exists()


def test_twenty_pushes_under_continuous_load_lose_nothing(digits_bundle, digits_splits,
                                                          tmp_path):
    store = ModelStore(tmp_path / "store")
    cloud = start_cloud(digits_bundle[0], tmp_path, "--store", str(tmp_path / "store"))
    agent = start_edge(digits_bundle[0], tmp_path, "--cloud", f"127.0.0.1:{cloud.info['port']}",
                       "--agent-id", "cam-load")
    try:
        with EdgeClient(agent.info["endpoint"]) as admin, \
                Load(agent.info["endpoint"], digits_splits.test.x[:300]) as load:
            for n in range(20):
                pushed = store.push(variant(digits_bundle[0], tmp_path / f"v{n}", f"v{n}"),
                                    agent="cam-load")
                served_before = load.ok
                wait_for(lambda v=pushed.version: admin.stats()["model"]["version"] == v)
                wait_for(lambda s=served_before: load.ok > s + 5)  # serving throughout
            reloads = admin.stats()["reloads"]
    finally:
        agent_status = agent.stop()
        cloud.stop()
    assert reloads["applied"] == 20 and reloads["rejected"] == 0
    assert load.failed == 0 and load.ok == load.sent
    assert load.sources["edge"] > 0 and load.sources["cloud"] > 0
    assert agent_status == 0


def test_agent_killed_mid_push_comes_back_on_a_consistent_version(digits_bundle, tmp_path):
    """The WAN is slow, so a push takes seconds; the agent is killed while receiving it."""
    store = ModelStore(tmp_path / "store")
    cloud = start_cloud(digits_bundle[0], tmp_path, "--store", str(tmp_path / "store"))
    proxy = ProxyThread(("127.0.0.1", cloud.info["port"]), LinkProfile())
    proxy.start()
    state = tmp_path / "agent-state"
    args = ("--cloud", f"127.0.0.1:{proxy.port}", "--agent-id", "cam-kill")
    env_state = {"CACHENET_STATE_DIR": str(state)}
    agent = start_edge(digits_bundle[0], tmp_path, *args, env=env_state)
    original = verify_bundle(digits_bundle[0]).version
    try:
        size = sum(p.stat().st_size for p in digits_bundle[0].rglob("*") if p.is_file())
        proxy.configure(dataclasses.replace(LinkProfile(), bandwidth_kbps=size * 8 / 1000 / 4))
        pushed = store.push(variant(digits_bundle[0], tmp_path / "new", "new"), agent="cam-kill")
        wait_for(lambda: "to cam-kill (push-" in cloud.log_path.read_text())
        agent.proc.kill()  # SIGKILL, in the middle of the ~4 s transfer
        agent.proc.wait()
        proxy.configure(LinkProfile())
        again = start_edge(digits_bundle[0], tmp_path, *args, env=env_state)
        try:
            with EdgeClient(again.info["endpoint"]) as c:
                assert c.stats()["model"]["version"] in (original, pushed.version)
                wait_for(lambda: c.stats()["model"]["version"] == pushed.version)
                assert c.stats()["reloads"]["rejected"] == 0
            installed = [p.name for p in state.iterdir()]
            assert pushed.version in installed
            assert not [n for n in installed if n.startswith(".incoming")]
            assert verify_bundle(state / pushed.version).version == pushed.version
        finally:
            assert again.stop() == 0
    finally:
        proxy.stop()
        cloud.stop()


def test_a_head_is_pushed_without_the_model_the_agent_has(digits_bundle, digits_splits,
                                                          tmp_path):
    """A head bundle's model file is the general model's: the push leaves it out, the
    agent takes it from its own bundle (by sha256), and the head serves."""
    import numpy as np

    from cachenet.fleet import specialize as sp

    general = verify_bundle(digits_bundle[0])
    dim, classes = general.features["dim"], (1, 4)
    rng = np.random.default_rng(0)
    head = sp.write_head_bundle(tmp_path / "head", rng.normal(size=(3, dim)),
                                rng.normal(size=3), general, classes,
                                canary_x=digits_splits.test.x[:16])
    with pushing(digits_bundle[0], tmp_path) as (store, proxy, cloud, live, c):
        c.stats()
        down = proxy.bytes_down
        pushed = store.push(head.root, agent="cam-1")
        wait_for(lambda: c.stats()["reloads"]["applied"] == 1)
        model_bytes = general.files[general.model_file()]["bytes"]
        assert proxy.bytes_down - down < model_bytes // 2  # the head, not the model
    installed_at = live.parent / ".pushed" / pushed.version
    assert (installed_at / "model.onnx").read_bytes() == \
        (digits_bundle[0] / general.model_file()).read_bytes()
    assert verify_bundle(installed_at).head == head.head
    assert f"agent cam-1 applied {pushed.version}" in cloud.log_path.read_text()
