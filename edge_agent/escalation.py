"""Where an agent escalates: a protocol, a target, and the client that speaks it.

An :class:`EscalationTarget` names the protocol (a key of :data:`PROTOCOLS`), the
address and, for the Open Inference Protocol, the model; :func:`connect` makes its
asyncio client, whose ``infer(x, timeout=..., agent_id=..., cache_model_version=...,
spooled=...)`` returns a :class:`~cachenet.protocol.client.CloudAnswer` or raises a
:class:`~cachenet.exceptions.CloudError`, whichever protocol is spoken:

* ``cachenet``: cachenet's own cloud (``cachenet.v1``), the default;
* ``oip``: any server of the Open Inference Protocol (KServe v2): Triton, KServe,
  MLServer, or cachenet's cloud's own OIP front end. The full model then runs on an
  engine built for scale, while cachenet's cloud keeps the control plane.

Adding a protocol is one entry in :data:`PROTOCOLS`.

The address is a gRPC target: ``host:port``; a comma-separated list of IP addresses
with ports (``10.0.0.5:50051,10.0.0.6:50051``), the replicas of one cloud; or a
name URI, ``dns:///cloud.example:50051``, which resolves to every replica (a
Kubernetes headless Service). Either way the channel balances calls round-robin over
the replicas it reaches and stops sending to one that goes away (gRPC's client-side
``round_robin``), and a call that fails UNAVAILABLE (a replica went away under it) is
tried once more within its deadline, by gRPC's own retry policy
(:func:`cachenet.protocol.client.channel_options`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from cachenet.exceptions import ConfigError
from cachenet.protocol.client import (
    INFER_METHOD,
    OIP_INFER_METHOD,
    AsyncCloudClient,
    channel_options,
)


def channel_target(spec: str) -> str:
    """The gRPC target for ``spec``: a URI as it is; one ``host:port`` as it is; a list of
    ``ip:port`` as gRPC's ``ipv4:``/``ipv6:`` list (ConfigError for a list of names)."""
    spec = spec.strip()
    if "://" in spec or spec.startswith(("ipv4:", "ipv6:", "unix:")) or "," not in spec:
        return spec
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    families = set()
    for entry in entries:
        host, _, port = entry.rpartition(":")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            raise ConfigError(f"'{entry[:80]}' in a list of cloud replicas is not an IP "
                              "address with a port; for names use one dns:///NAME:PORT that "
                              "resolves to every replica") from None
        if not port.isdigit():
            raise ConfigError(f"'{entry[:80]}' in a list of cloud replicas has no port")
    if len(families) != 1:
        raise ConfigError("a list of cloud replicas mixes IPv4 and IPv6 addresses")
    return f"ipv{families.pop()}:{','.join(entries)}"


@dataclass(frozen=True)
class EscalationTarget:
    protocol: str = "cachenet"
    address: str = ""
    model: str = ""  # the model's name on an OIP server
    model_version: str = ""
    input_name: str = "input"  # its input, and its output of N x K logits
    output_name: str = "logits"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"escalation protocol '{self.protocol[:32]}' is not one of "
                              f"{', '.join(PROTOCOLS)}")
        if self.protocol == "oip" and not self.model:
            raise ConfigError("escalating over the Open Inference Protocol needs the model's "
                              "name (escalate_model)")
        channel_target(self.address)  # refuse a bad list now, not at the first escalation

    @property
    def sends_levels(self) -> bool:
        """Whether uint8 pixel levels may go up in place of float32 (cachenet's cloud
        turns them back; another engine's model takes what its metadata says)."""
        return self.protocol == "cachenet"


def _cachenet(t: EscalationTarget, credentials: grpc.ChannelCredentials | None,
              retry: bool) -> Any:
    options = channel_options(balanced=True, retry=[INFER_METHOD] if retry else [])
    return AsyncCloudClient(channel_target(t.address), options=options,
                            credentials=credentials)


def _oip(t: EscalationTarget, credentials: grpc.ChannelCredentials | None,
         retry: bool) -> Any:
    from cachenet.protocol.openinference import AsyncOIPClient

    options = channel_options(balanced=True, retry=[OIP_INFER_METHOD] if retry else [])
    return AsyncOIPClient(channel_target(t.address), t.model, model_version=t.model_version,
                          input_name=t.input_name, logits_name=t.output_name,
                          options=options, credentials=credentials)


#: protocol -> a function of (target, credentials, retry) making its asyncio client, whose
#: ``infer`` answers one input and ``capabilities`` says what the server takes.
PROTOCOLS: dict[str, Callable[[EscalationTarget, grpc.ChannelCredentials | None, bool],
                              Any]] = {
    "cachenet": _cachenet,
    "oip": _oip,
}


def connect(target: EscalationTarget, credentials: grpc.ChannelCredentials | None, *,
            retry: bool = True) -> Any:
    """The asyncio client for ``target``; call inside the running event loop. ``retry``:
    gRPC's retry policy on the channel (not for spooled uploads, which retry on their own,
    counted)."""
    return PROTOCOLS[target.protocol](target, credentials, retry)
