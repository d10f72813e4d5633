"""Protobuf parsing shared by the gRPC front ends: lenient parsing, unknown fields.

A request whose bytes do not parse reaches the service as :class:`Undecodable` (so it
is answered INVALID_ARGUMENT saying so, not failed by gRPC as UNKNOWN), and fields a
message does not define are refused by number rather than silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import message as pb_message
from google.protobuf import unknown_fields

from cachenet.exceptions import ProtocolError


@dataclass
class Undecodable:
    """Stands in for a request whose bytes do not parse, so it gets INVALID_ARGUMENT."""

    reason: str


def lenient_parser(cls: type[pb_message.Message]):
    def parse(data: bytes) -> pb_message.Message | Undecodable:
        try:
            return cls.FromString(data)
        except pb_message.DecodeError as exc:
            return Undecodable(f"request does not decode as {cls.DESCRIPTOR.full_name}: {exc}")
    return parse


def reject_unknown_fields(msg: pb_message.Message, where: str, *, speaks: str = "cachenet.v1"
                          ) -> None:
    unknown = unknown_fields.UnknownFieldSet(msg)
    if len(unknown):
        numbers = sorted({f.field_number for f in unknown})
        raise ProtocolError(f"{where} has unknown field number(s) {numbers}; this server "
                            f"speaks {speaks}")
    for fd, value in msg.ListFields():
        if isinstance(value, pb_message.Message):
            reject_unknown_fields(value, f"{where}.{fd.name}", speaks=speaks)
