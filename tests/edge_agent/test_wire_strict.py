"""Replies are strict JSON: a non-finite number never reaches the wire as a bare token."""

from __future__ import annotations

import json
import math

import pytest

from cachenet.exceptions import ProtocolError
from edge_agent import wire


def test_a_reply_holding_a_non_finite_number_becomes_an_error_reply():
    frames = wire.encode_reply([b"who", b""], {"id": "7", "ok": True, "confidence": math.nan})
    assert frames[:2] == [b"who", b""]
    reply = wire.decode_reply(frames[-1])
    assert reply == {"id": "7", "ok": False, "error": {
        "type": "InternalError", "message": "the answer held a non-finite number"}}


def test_replies_are_parsed_strictly():
    assert wire.decode_reply(b'{"id": 1, "ok": true}') == {"id": 1, "ok": True}
    with pytest.raises(ProtocolError, match="NaN"):
        wire.decode_reply(b'{"id": 1, "confidence": NaN}')
    assert json.loads(wire.encode_reply([], {"id": 2, "ok": True, "c": 0.5})[-1])["c"] == 0.5
