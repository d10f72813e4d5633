"""Edge agent configuration: defaults < config file < ``CACHENET_*`` environment < flags."""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cachenet.core.audit import AuditConfig
from cachenet.exceptions import ConfigError


@dataclass
class AgentConfig:
    bundle: Path | None = None
    #: ZeroMQ endpoint the ROUTER socket binds; port 0 picks a free port.
    bind: str = "tcp://127.0.0.1:5555"
    #: host:port of the cloud server (its control plane, and where escalations go unless
    #: ``escalate_to`` says otherwise); a comma-separated list of replicas' ip:port, or
    #: dns:///NAME:PORT, balances over them. None (and no ``escalate_to``): edge only.
    cloud: str | None = None
    #: the escalation target's protocol: ``cachenet`` (cachenet.v1) or ``oip`` (the Open
    #: Inference Protocol: Triton, KServe, MLServer), its address (default: ``cloud``),
    #: and on an OIP server the model's name and version and the names of its input and
    #: of its output of logits (edge_agent.escalation)
    escalate: str = "cachenet"
    escalate_to: str | None = None
    escalate_model: str = ""
    escalate_model_version: str = ""
    escalate_input: str = "input"
    escalate_output: str = "logits"
    #: deadline of one escalation, ms; past it the agent answers with its own prediction.
    deadline_ms: float = 250.0
    #: ONNX Runtime intra-op threads.
    threads: int = 1
    precision: str = "fp32"
    agent_id: str = socket.gethostname()
    #: latencies kept for the percentiles in ``stats``.
    latency_window: int = 10_000
    #: most escalations in flight at once; beyond it, unsure inputs fall back at once.
    max_inflight: int = 256
    #: the largest message the local socket accepts (ZMQ_MAXMSGSIZE); a peer that sends a
    #: bigger one is disconnected before the frame is buffered
    max_message_bytes: int = 8 << 20
    ready_file: Path | None = None
    log_level: str = "INFO"
    #: Prometheus metrics on this port (0: any free one; None: off), bound to metrics_host
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: subscribe to the cloud's control plane for pushed bundles (needs ``cloud``).
    control: bool = True
    token: str = ""
    #: the fleet's public key (``cachenet keys``' signing.pub): bundles it does not verify
    #: are refused, at start and when pushed
    trusted_key: Path | None = None
    #: accept a pushed bundle created before the running one
    allow_rollback: bool = False
    #: spool the inputs answered at the edge while the cloud was away, and upload them
    #: when it is back (``spool_dir``: default ``.spool`` beside the bundle)
    spool: bool = True
    spool_dir: Path | None = None
    spool_max_items: int = 100_000
    spool_max_bytes: int = 64 << 20
    spool_max_age_s: float = 7 * 86400.0
    #: TLS to the cloud: the fleet's CA, and this agent's certificate and key (mutual TLS,
    #: ``cachenet certs``); unset, the links are plaintext (logged loudly)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: where pushed bundles are installed; default: ``.pushed`` beside the bundle.
    state_dir: Path | None = None
    keep_bundles: int = 3
    #: partition models (pushed specialised cache models) held at once, LRU.
    partition_models: int = 3
    #: serve through the bundle's layer caches when it carries them (``cachenet layercache``)
    layer_cache: bool = True
    #: re-weight the general model's posterior by the stream's class prior, where the
    #: bundle carries a calibrated label-shift gate (``label_shift``)
    label_shift: bool = True
    #: escalate float32 inputs made of 8-bit pixels as those uint8 levels (lossless, 4x
    #: fewer bytes up); the cloud turns them back into the same float32
    native_uplink: bool = True
    #: share of edge answers also sent to the cloud to audit the agreement online
    audit_rate: float = 0.02
    #: share audited in the 40 edge answers after a change (start, stream move, swap)
    audit_burst_rate: float = 0.25
    #: the audit's bound holds with confidence 1 - audit_alpha, at all times at once
    audit_alpha: float = 0.05
    #: edge answers a step that broke the target stays dropped (doubled on repeats)
    audit_cooldown: int = 500

    def __post_init__(self) -> None:
        if self.bundle is not None:
            self.bundle = Path(self.bundle)
        if self.ready_file is not None:
            self.ready_file = Path(self.ready_file)
        if self.state_dir is not None:
            self.state_dir = Path(self.state_dir)
        if min(self.spool_max_items, self.spool_max_bytes) < 1 or not self.spool_max_age_s > 0:
            raise ConfigError("spool_max_items, spool_max_bytes and spool_max_age_s must be > 0")
        for name in ("trusted_key", "tls_ca", "tls_cert", "tls_key", "spool_dir"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        if (self.tls_cert is None) != (self.tls_key is None) or (
                self.tls_cert is not None and self.tls_ca is None):
            raise ConfigError("tls_cert and tls_key go together, with tls_ca")
        if isinstance(self.control, str):
            self.control = self.control.lower() not in ("0", "false", "no", "off")
        if not math.isfinite(self.deadline_ms) or self.deadline_ms <= 0:
            raise ConfigError(f"deadline_ms must be > 0, got {self.deadline_ms}")
        if min(self.threads, self.max_inflight, self.latency_window, self.partition_models) < 1:
            raise ConfigError("threads, max_inflight, latency_window and partition_models must "
                              "be >= 1")
        if self.max_message_bytes < 4096:
            raise ConfigError(f"max_message_bytes must be at least 4096 (a header), got "
                              f"{self.max_message_bytes}")
        AuditConfig(rate=self.audit_rate, alpha=self.audit_alpha, cooldown=self.audit_cooldown,
                    burst_rate=self.audit_burst_rate)
        self.escalation_target()  # a bad protocol, model or replica list: refused now
        if self.precision not in ("fp32", "int8"):
            raise ConfigError(f"precision must be fp32 or int8, got '{self.precision}'")

    def escalation_target(self) -> Any:
        """Where unsure inputs go (:class:`edge_agent.escalation.EscalationTarget`), or
        None for an agent that answers everything itself."""
        from edge_agent.escalation import EscalationTarget

        address = self.escalate_to or self.cloud
        if not address:
            return None
        return EscalationTarget(self.escalate, address, self.escalate_model,
                                self.escalate_model_version, self.escalate_input,
                                self.escalate_output)

    def channel_credentials(self) -> Any:
        """gRPC credentials for the links to the cloud, or None for plaintext."""
        if self.tls_ca is None:
            return None
        from cachenet.protocol.tls import TLSFiles, channel_credentials

        return channel_credentials(TLSFiles(self.tls_ca, self.tls_cert, self.tls_key))

    def audit_config(self, target: float | None) -> AuditConfig:
        """The audit's settings; ``target``: the agreement the bundle was calibrated to."""
        return AuditConfig(rate=self.audit_rate, target=target or 0.99, alpha=self.audit_alpha,
                           cooldown=self.audit_cooldown, burst_rate=self.audit_burst_rate)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(AgentConfig)}[name]
    if value is None or not isinstance(value, str):
        return value
    if "bool" in str(kind):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    try:
        if "float" in str(kind):
            return float(value)
        if "int" in str(kind):
            return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got '{value}'") from None
    return value


def _toml() -> Any:
    """The TOML parser: the standard library's from Python 3.11, tomli on 3.10 (JetPack 6
    on a Jetson ships 3.10); the two share their API."""
    try:
        import tomllib  # novermin: 3.10 takes the branch below
    except ModuleNotFoundError:
        import tomli as tomllib
    return tomllib


def read_file(path: Path) -> dict[str, Any]:
    """Settings from a JSON or TOML file; unknown keys are an error."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        if path.suffix == ".toml":
            data = _toml().loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json and tomllib raise their own types
        raise ConfigError(f"config file {path} does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings")
    unknown = sorted(set(data) - set(AgentConfig.field_names()))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {unknown}")
    return data


def from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    return {name: env[f"CACHENET_{name.upper()}"] for name in AgentConfig.field_names()
            if f"CACHENET_{name.upper()}" in env}


def load_config(*, file: Path | None = None, environ: dict[str, str] | None = None,
                **overrides: Any) -> AgentConfig:
    """Merge the layers; ``overrides`` (flags) whose value is None are ignored."""
    merged: dict[str, Any] = {}
    if file is not None:
        merged.update(read_file(file))
    merged.update(from_env(environ))
    merged.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(merged) - set(AgentConfig.field_names()))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}")
    return AgentConfig(**{k: _coerce(k, v) for k, v in merged.items()})
