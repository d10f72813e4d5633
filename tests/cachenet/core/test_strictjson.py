"""Files cachenet writes hold finite numbers only, and a refusal names the field."""

from __future__ import annotations

import json
import math

import pytest

from cachenet.core import strictjson


@pytest.mark.parametrize("value,field", [
    ({"a": {"b": [1.0, math.nan]}}, "a.b[1]"),
    ({"calibration": {"agreement": math.inf}}, "calibration.agreement"),
    ([{"x": 1}, {"y": -math.inf}], "[1].y"),
    (math.nan, "(the document)"),
])
def test_non_finite_numbers_are_refused_by_field(value, field):
    assert strictjson.nonfinite(value)[0] == field
    with pytest.raises(strictjson.NonFiniteError) as err:
        strictjson.dumps(value)
    assert err.value.field == field and f"'{field}'" in str(err.value)


def test_what_is_written_reads_back_strictly_and_a_refusal_writes_nothing(tmp_path):
    path = tmp_path / "report.json"
    strictjson.write(path, {"agreement": None, "hit_rate": 0.5, "big": 10 ** 30})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {
        "agreement": None, "hit_rate": 0.5, "big": 10 ** 30}
    with pytest.raises(ValueError, match="'hit_rate' is nan"):
        strictjson.write(path, {"hit_rate": math.nan})
    assert json.loads(path.read_text())["hit_rate"] == 0.5  # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
