"""The bundle loader under fuzzing: any manifest, any bytes, a clear error or a bundle."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachenet.core.manifest import parse_manifest, validate
from cachenet.exceptions import ManifestError
from tests.fuzzing import FUZZ, JSON, bounded, mutated, paths


@pytest.fixture(scope="module")
def good(digits_bundle) -> dict:
    return json.loads((digits_bundle[0] / "manifest.json").read_text())


@FUZZ
@given(data=st.data())
def test_any_edited_manifest_validates_or_names_what_is_wrong(good, data):
    path = data.draw(st.sampled_from(paths(good)))
    edited = mutated(good, path, data.draw(JSON), data.draw(st.booleans()))
    try:
        validate(edited)
    except ManifestError as exc:
        assert bounded(str(exc)), str(exc)[:200]


@FUZZ
@given(raw=st.binary(max_size=512) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_parse_or_are_a_manifest_error(raw):
    try:
        parse_manifest(raw, "fuzz")
    except ManifestError as exc:
        assert bounded(str(exc))
