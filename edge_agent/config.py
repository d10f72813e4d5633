"""The edge agent's settings: defaults < config file < ``CACHENET_*`` environment < flags,
read by the loader both daemons share (:mod:`cachenet.core.settings`)."""

from __future__ import annotations

import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cachenet.core import settings
from cachenet.core.audit import AuditConfig
from cachenet.core.rolling import RollingConfig
from cachenet.core.settings import setting
from cachenet.exceptions import ConfigError


@dataclass
class AgentConfig:
    """The agent's settings (:mod:`cachenet.core.settings`: defaults < ``--config`` file <
    ``CACHENET_*`` variables < flags)."""

    bundle: Path | None = setting(None, "cache bundle directory")
    bind: str = setting("tcp://127.0.0.1:5555", "ZeroMQ endpoint the ROUTER socket binds "
                        "(port 0: any free one)")
    cloud: str | None = setting(None, "cloud server host:port: its control plane, and where "
                                "escalations go; a list ip:port,ip:port or dns:///NAME:PORT "
                                "balances over replicas (unset: edge only)")
    escalate: Literal["cachenet", "oip"] = setting(
        "cachenet", "the escalation target's protocol: cachenet.v1 or the Open Inference "
        "Protocol (Triton, KServe, MLServer)")
    escalate_to: str | None = setting(None, "where escalations go, if not --cloud (same forms)")
    escalate_model: str = setting("", "the full model's name on the OIP server")
    escalate_model_version: str = setting("", "and its version (empty: the server's)")
    escalate_input: str = setting("input", "the model's input name on the OIP server")
    escalate_output: str = setting("logits", "its output of N x K logits; labels and "
                                   "confidences are derived from it")
    deadline_ms: float = setting(250.0, "deadline of one escalation, ms; past it the agent "
                                 "answers with its own prediction")
    threads: int = setting(1, "ONNX Runtime intra-op threads")
    precision: Literal["fp32", "int8"] = setting("fp32", "the bundle's model variant to run")
    agent_id: str = setting(socket.gethostname(), "this agent's name (default: the host name)")
    latency_window: int = setting(10_000, "latencies kept for the percentiles in stats")
    max_inflight: int = setting(256, "most escalations in flight at once; beyond it, unsure "
                                "inputs fall back at once")
    max_message_bytes: int = setting(8 << 20, "the largest message the local socket accepts "
                                     "(ZMQ_MAXMSGSIZE); a bigger one disconnects its sender")
    ready_file: Path | None = setting(None, "write {endpoint, pid} here once serving")
    log_level: str = setting("INFO", "logging level")
    metrics_port: int | None = setting(None, "serve Prometheus metrics on this port (0: any; "
                                       "unset: off)")
    metrics_host: str = setting("127.0.0.1", "address the metrics port binds")
    control: bool = setting(True, "subscribe to the cloud's control plane for pushed bundles")
    token: str = setting("", "token the control plane asks of this agent")
    trusted_key: Path | None = setting(None, "the fleet's public key (cachenet keys' "
                                       "signing.pub): refuse bundles it does not verify")
    allow_rollback: bool = setting(False, "accept a pushed bundle older than the running one")
    spool: bool = setting(True, "spool inputs answered while the cloud was away and upload "
                          "them when it is back")
    spool_dir: Path | None = setting(None, "where they wait (default: spool-<agent id> in the "
                                     "state directory)")
    spool_max_items: int = setting(100_000, "most inputs spooled")
    spool_max_bytes: int = setting(64 << 20, "most bytes spooled")
    spool_max_age_s: float = setting(7 * 86400.0, "age past which a spooled input is dropped")
    tls_ca: Path | None = setting(None, "TLS to the cloud: the fleet's CA (PEM; unset: "
                                  "plaintext, logged loudly)")
    tls_cert: Path | None = setting(None, "TLS: this agent's certificate (PEM, cachenet certs)")
    tls_key: Path | None = setting(None, "TLS: this agent's private key (PEM)")
    state_dir: Path | None = setting(None, "where pushed bundles are installed (default: "
                                     ".pushed beside the bundle)")
    keep_bundles: int = setting(3, "pushed bundles kept installed")
    partition_models: int = setting(3, "partition models (pushed specialised cache models) "
                                    "held at once, LRU")
    layer_cache: bool = setting(True, "serve through the bundle's layer caches when it "
                                "carries them")
    label_shift: bool = setting(True, "re-weight the cache model by the stream's class "
                                "prior, where the bundle carries a calibrated label-shift gate")
    native_uplink: bool = setting(True, "escalate camera frames as their uint8 levels "
                                  "(lossless, 4x fewer bytes up)")
    audit_rate: float = setting(0.02, "share of edge answers also checked by the cloud")
    audit_burst_rate: float = setting(0.25, "share audited in the 40 edge answers after a "
                                      "change (start, stream move, swap)")
    audit_alpha: float = setting(0.05, "the audit's bound holds with confidence 1 - alpha, "
                                 "at all times at once")
    audit_cooldown: int = setting(500, "edge answers a step that broke the target stays "
                                  "dropped (doubled on repeats)")
    class_control: bool = setting(True, "move the general model's threshold per class of its "
                                  "answer with the audit's evidence (rolling risk control)")
    class_control_gain: float = setting(0.0005, "threshold units per unit of the audit's "
                                        "weighted excess disagreement")
    class_control_slack: float = setting(0.05, "how far below the calibrated threshold a "
                                         "class may go where its stream is easy")

    def __post_init__(self) -> None:
        for name in ("bundle", "ready_file", "state_dir", "trusted_key", "tls_ca", "tls_cert",
                     "tls_key", "spool_dir"):  # given as text by a caller, not the loader
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        if min(self.spool_max_items, self.spool_max_bytes) < 1 or not self.spool_max_age_s > 0:
            raise ConfigError("spool_max_items, spool_max_bytes and spool_max_age_s must be > 0")
        if (self.tls_cert is None) != (self.tls_key is None) or (
                self.tls_cert is not None and self.tls_ca is None):
            raise ConfigError("tls_cert and tls_key go together, with tls_ca")
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
        self.rolling_config()
        self.escalation_target()  # a bad protocol, model or replica list: refused now

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

    def rolling_config(self) -> RollingConfig | None:
        """The per-class control's settings, or None where it is off."""
        if not self.class_control:
            return None
        return RollingConfig(gain=self.class_control_gain, slack=self.class_control_slack)

    def audit_config(self, target: float | None) -> AuditConfig:
        """The audit's settings; ``target``: the agreement the bundle was calibrated to."""
        return AuditConfig(rate=self.audit_rate, target=target or 0.99, alpha=self.audit_alpha,
                           cooldown=self.audit_cooldown, burst_rate=self.audit_burst_rate)


def load_config(*, file: Path | None = None, environ: Mapping[str, str] | None = None,
                **flags: Any) -> AgentConfig:
    """The agent's settings from ``file``, ``environ`` (default: the process's) and
    ``flags`` (by setting name; None: not given), each overriding the one before."""
    return settings.load(AgentConfig, file=file, environ=environ, flags=flags)
