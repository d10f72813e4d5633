"""The cloud server's settings: defaults < config file < ``CACHENET_*`` environment < flags,
read by the loader both daemons share (:mod:`cachenet.core.settings`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachenet.core import settings
from cachenet.core.calibration import check_calibration
from cachenet.core.settings import setting
from cachenet.exceptions import ConfigError
from cachenet.protocol.tls import TLSFiles

#: Generations queued or running at once, by default.
MAX_GENERATIONS = 8


@dataclass
class ServerConfig:
    """What one ``cachenet-cloud`` process serves, and how."""

    bundle: Path | None = setting(None, "bundle directory holding the full model")
    host: str = setting("127.0.0.1", "address to serve on")
    port: int = setting(50051, "port to serve on (0: any free one; see --ready-file)")
    device: str | None = setting(None, "cuda, cuda:1 or cpu (default: cuda when there is one)")
    max_batch_size: int = setting(32, "most requests one batch holds")
    max_queue_delay_us: int = setting(0, "how long a batch waits for more requests (0: take "
                                      "what is queued)")
    max_queue_size: int = setting(1024, "requests queued at most; beyond it they are refused "
                                  "(RESOURCE_EXHAUSTED)")
    store: Path | None = setting(None, "model store to push bundles from (enables the control "
                                 "plane)")
    specialize: bool = setting(False, "specialise cache models per agent and push them (needs "
                               "--store)")
    replay: str | None = setting(None, "data set for specialisation (default: the one the "
                                 "bundle was built on)")
    library: Path | None = setting(None, "directory of partition models, kept and reused "
                                   "across runs (default: STORE/library)")
    library_size: int = setting(64, "partition models kept in the library; the least recently "
                                "used that no agent runs are deleted past it")
    specialize_interval_s: float = setting(60.0, "least seconds between two specialisation "
                                           "checks for one agent",
                                           flag="--specialize-interval")
    escalation_trigger: float = setting(0.15, "check an agent whose escalation rate is above "
                                        "this")
    specialize_target: float = setting(0.99, "agreement target the specialised models are "
                                       "calibrated to", flag="--target")
    specialize_calibration: str = setting("class", "how a specialised model's threshold is "
                                          "certified: class (no class of the full model's "
                                          "answer shown above the target) or marginal",
                                          flag="--specialize-calibration")
    partition_trainer: str = setting("finetune", "how partition models are made: finetune "
                                     "(the general cache model fine-tuned), head (a new last "
                                     "layer on its frozen features: seconds to train, "
                                     "kilobytes to push) or oracle (the full model folded "
                                     "into the partition's classes: the upper bound, as large "
                                     "as the full model)")
    report_interval_s: int = setting(30, "seconds between agents' stats reports (control "
                                     "plane)", flag="--report-interval")
    grace_s: float = setting(10.0, "seconds to drain on shutdown", flag="--grace")
    stats_interval_s: float = setting(30.0, "seconds between stats lines in the log",
                                      flag="--stats-interval")
    ready_file: Path | None = setting(None, "write {port, pid} as JSON here once serving")
    log_level: str = setting("INFO", "logging level")
    layer_cache: bool = setting(False, "serve the full model with the bundle's layer caches "
                                "(add them with `cachenet layercache`)")
    layer_cache_refresh: float | None = setting(None, "share of layer-cache hits re-checked "
                                                "by the whole model (default: the bundle's)")
    diffusion: dict[str, Path] = setting(
        help="also generate images with this diffusion checkpoint, served as NAME "
        "(repeatable; the first is the default; comma-separated in the variable)",
        default_factory=dict)
    max_generations: int = setting(MAX_GENERATIONS, "generations queued or running at once; "
                                   "more are refused (RESOURCE_EXHAUSTED)")
    max_image_steps: int | None = setting(None, "the most work one generation may ask for: "
                                          "count x steps (x2 with guidance; default 16000)")
    signing_key: Path | None = setting(None, "Ed25519 private key (cachenet keys) that signs "
                                       "every bundle stored and pushed, for agents that pin "
                                       "the fleet's public key")
    tls_ca: Path | None = setting(None, "TLS: the fleet's CA (clients must show a certificate "
                                  "it signed; PEM, cachenet certs)")
    tls_cert: Path | None = setting(None, "TLS: the cloud's certificate (PEM)")
    tls_key: Path | None = setting(None, "TLS: the cloud's private key (PEM)")
    tls_client_cert: bool = setting(True, "with TLS, require client certificates (without, "
                                    "agents prove nothing)", flag="--tls-no-client-cert")
    metrics_port: int | None = setting(None, "serve Prometheus metrics on this port (0: any; "
                                       "unset: off)")
    metrics_host: str = setting("127.0.0.1", "address the metrics port binds (0.0.0.0 to be "
                                "scraped from elsewhere)")
    health_port: int | None = setting(None, "also serve the gRPC health service alone, "
                                      "plaintext, on this port (for probes that have no "
                                      "client certificate)")

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue_size", "max_generations", "library_size",
                     "report_interval_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_delay_us < 0 or not 0 <= self.port < 65536:
            raise ConfigError("max_queue_delay_us must be >= 0 and port in [0, 65535]")
        for name in ("grace_s", "stats_interval_s", "specialize_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.layer_cache_refresh is not None and not 0 <= self.layer_cache_refresh <= 1:
            raise ConfigError(f"layer_cache_refresh must lie in [0, 1], got "
                              f"{self.layer_cache_refresh}")
        if self.specialize and self.store is None:
            raise ConfigError("specialisation pushes through the model store: give --store")
        check_calibration(self.specialize_calibration)

    def tls(self) -> TLSFiles | None:
        if self.tls_cert is None and self.tls_key is None and self.tls_ca is None:
            return None
        if self.tls_cert is None or self.tls_key is None or self.tls_ca is None:
            raise ConfigError("TLS needs --tls-ca, --tls-cert and --tls-key together")
        return TLSFiles(self.tls_ca, self.tls_cert, self.tls_key)

    def specializer(self) -> Any:
        """The specialiser's settings (:class:`cloud_server.specializer.SpecializerConfig`)."""
        from cloud_server.specializer import SpecializerConfig

        return SpecializerConfig(min_interval_s=self.specialize_interval_s,
                                 escalation_trigger=self.escalation_trigger,
                                 target=self.specialize_target, max_library=self.library_size,
                                 trainer=self.partition_trainer,
                                 calibration=self.specialize_calibration)


def load_config(*, file: Path | None = None, environ: Mapping[str, str] | None = None,
                **flags: Any) -> ServerConfig:
    """The server's settings from ``file``, ``environ`` (default: the process's) and
    ``flags`` (by setting name; None: not given), each overriding the one before."""
    return settings.load(ServerConfig, file=file, environ=environ, flags=flags)
