"""``models push`` under fuzzing: a bundle with any edited manifest is refused with a
clear error, or stored, and then every agent can load it."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachenet.core.runtime import load_cache_model
from cachenet.exceptions import CachenetError
from cachenet.fleet.store import ModelStore
from edge_agent.engine import equip
from tests.fuzzing import FUZZ, JSON, bounded, mutated, paths


@pytest.fixture(scope="module")
def workspace(digits_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-push")
    bundle = root / "bundle"
    shutil.copytree(digits_bundle[0], bundle)
    good = json.loads((bundle / "manifest.json").read_text())
    return bundle, good, ModelStore(root / "store", keep=2)


@FUZZ
@given(data=st.data())
def test_a_pushed_bundle_is_refused_clearly_or_loads_on_an_agent(workspace, data):
    bundle, good, store = workspace
    path = data.draw(st.sampled_from(paths(good)))
    edited = mutated(good, path, data.draw(JSON), data.draw(st.booleans()))
    (bundle / "manifest.json").write_text(json.dumps(edited))
    try:
        stored = store.push(bundle, agent=data.draw(st.sampled_from(["default", "cam-1"])))
    except CachenetError as exc:
        assert bounded(str(exc)), str(exc)[:200]
        return
    equip(load_cache_model(stored.path), 1)  # what an agent does with it
