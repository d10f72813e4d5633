"""Kept for applications written against ``cachenet.client``: the clients live in
:mod:`cachenet.protocol.client`."""

from cachenet.protocol.client import (
    CHANNEL_OPTIONS,
    AsyncCloudClient,
    CloudAnswer,
    CloudClient,
    make_request,
    map_grpc_errors,
    parse_response,
    to_cloud_error,
)

__all__ = ["CHANNEL_OPTIONS", "AsyncCloudClient", "CloudAnswer", "CloudClient", "make_request",
           "map_grpc_errors", "parse_response", "to_cloud_error"]
