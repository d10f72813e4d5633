"""``cachenet-cloud`` / ``python -m cloud_server``: serve a bundle's full model over gRPC
(and, with ``--diffusion``, generate images with diffusion models)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cachenet.exceptions import CachenetError


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"CACHENET_{name}", default)


def _named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got '{text}'")
    return name, Path(path)


def _diffusion_models(pairs: list[tuple[str, Path]] | None) -> dict[str, Path]:
    """``--diffusion`` flags by name; without any, ``CACHENET_DIFFUSION`` (comma-separated)."""
    if pairs is None:
        try:
            pairs = [_named_path(v) for v in (_env("DIFFUSION") or "").split(",") if v]
        except argparse.ArgumentTypeError as exc:
            raise CachenetError(f"CACHENET_DIFFUSION: {exc}") from None
    models: dict[str, Path] = {}
    for name, path in pairs:
        if name in models:
            raise CachenetError(f"--diffusion names '{name}' twice")
        models[name] = path
    return models


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cachenet-cloud", description=__doc__)
    p.add_argument("--bundle", type=Path, default=_env("BUNDLE"), required=_env("BUNDLE") is None,
                   help="bundle directory holding the full model (env CACHENET_BUNDLE)")
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(_env("PORT", "50051")),
                   help="0 picks a free port (see --ready-file)")
    p.add_argument("--device", default=_env("DEVICE"), help="cuda, cuda:1, cpu (default: auto)")
    p.add_argument("--max-batch-size", type=int, default=int(_env("MAX_BATCH_SIZE", "32")))
    p.add_argument("--max-queue-delay-us", type=int,
                   default=int(_env("MAX_QUEUE_DELAY_US", "0")),
                   help="how long a batch waits for more requests (0: take what is queued)")
    p.add_argument("--max-queue-size", type=int, default=int(_env("MAX_QUEUE_SIZE", "1024")))
    p.add_argument("--store", type=Path, default=_env("STORE"),
                   help="model store to push bundles from (enables the control plane)")
    p.add_argument("--specialize", action="store_true",
                   default=_env("SPECIALIZE", "0") not in ("0", "", "false"),
                   help="specialise cache models per agent and push them (needs --store)")
    p.add_argument("--replay", default=_env("REPLAY"),
                   help="data set for specialisation (default: the one the bundle was built on)")
    p.add_argument("--library", type=Path, default=_env("LIBRARY"),
                   help="directory of partition models, kept and reused across runs "
                        "(default: STORE/library)")
    p.add_argument("--library-size", type=int, default=int(_env("LIBRARY_SIZE", "64")),
                   help="partition models kept in the library; the least recently used "
                        "that no agent runs are deleted past it (default 64)")
    p.add_argument("--specialize-interval", type=float, default=60.0,
                   help="least seconds between two specialisation checks for one agent")
    p.add_argument("--escalation-trigger", type=float, default=0.15,
                   help="check an agent whose escalation rate is above this")
    p.add_argument("--target", type=float, default=0.99,
                   help="agreement target the specialised models are calibrated to")
    p.add_argument("--partition-trainer", default=_env("PARTITION_TRAINER", "finetune"),
                   help="how partition models are made: finetune (the general cache model "
                   "fine-tuned, the default) or oracle (the full model folded into the "
                   "partition's classes: the upper bound, as large as the full model)")
    p.add_argument("--layer-cache", action="store_true",
                   default=_env("LAYER_CACHE", "0") not in ("0", "", "false"),
                   help="serve the full model with the bundle's layer caches (off by "
                        "default; add them with `cachenet layercache`)")
    p.add_argument("--layer-cache-refresh", type=float, default=None,
                   help="share of layer-cache hits re-checked by the whole model "
                        "(default: the bundle's)")
    p.add_argument("--diffusion", type=_named_path, action="append", metavar="NAME=PATH",
                   help="also generate images with this diffusion checkpoint, served as NAME "
                   "(repeatable; the first is the default; env CACHENET_DIFFUSION, "
                   "comma-separated)")
    p.add_argument("--max-generations", type=int, default=int(_env("MAX_GENERATIONS", "8")),
                   help="generations queued or running at once; more are refused "
                   "(RESOURCE_EXHAUSTED)")
    p.add_argument("--max-image-steps", type=int, default=_env("MAX_IMAGE_STEPS"),
                   help="the most work one generation may ask for: count x steps "
                   "(x2 with guidance; default 16000)")
    p.add_argument("--signing-key", type=Path, default=_env("SIGNING_KEY"),
                   help="Ed25519 private key (cachenet keys) that signs every bundle stored "
                   "and pushed, for agents that pin the fleet's public key")
    for side, what in (("ca", "the fleet's CA (clients must show a certificate it signed)"),
                       ("cert", "the cloud's certificate"), ("key", "the cloud's private key")):
        p.add_argument(f"--tls-{side}", type=Path, default=_env(f"TLS_{side.upper()}"),
                       help=f"TLS: {what} (PEM; cachenet certs)")
    p.add_argument("--tls-no-client-cert", dest="tls_client_cert", action="store_false",
                   help="TLS without client certificates (agents then prove nothing)")
    p.add_argument("--metrics-port", type=int, default=_env("METRICS_PORT"),
                   help="serve Prometheus metrics on this port (0: any; default: off)")
    p.add_argument("--metrics-host", default=_env("METRICS_HOST", "127.0.0.1"),
                   help="address the metrics port binds (0.0.0.0 to be scraped from "
                   "elsewhere)")
    p.add_argument("--health-port", type=int, default=_env("HEALTH_PORT"),
                   help="also serve the gRPC health service alone, plaintext, on this port "
                   "(for probes that have no client certificate)")
    p.add_argument("--report-interval", type=int, default=30,
                   help="seconds between agents' stats reports (control plane)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds to drain on shutdown")
    p.add_argument("--stats-interval", type=float, default=30.0)
    p.add_argument("--ready-file", type=Path,
                   help="write {port, pid} as JSON here once serving")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cloud_server.server import CloudServer, ServerConfig
    from cloud_server.specializer import SpecializerConfig

    try:
        config = ServerConfig(
            bundle=args.bundle, host=args.host, port=args.port, device=args.device,
            max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
            max_queue_size=args.max_queue_size, store=args.store, specialize=args.specialize,
            replay=args.replay, library=args.library, report_interval_s=args.report_interval,
            layer_cache=args.layer_cache, layer_cache_refresh=args.layer_cache_refresh,
            specializer=SpecializerConfig(
                min_interval_s=args.specialize_interval,
                escalation_trigger=args.escalation_trigger, target=args.target,
                max_library=args.library_size, trainer=args.partition_trainer),
            diffusion=_diffusion_models(args.diffusion), max_generations=args.max_generations,
            max_image_steps=None if args.max_image_steps is None else int(args.max_image_steps),
            signing_key=args.signing_key, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
            tls_key=args.tls_key, tls_client_cert=args.tls_client_cert,
            grace_s=args.grace, stats_interval_s=args.stats_interval,
            ready_file=args.ready_file,
            metrics_port=None if args.metrics_port is None else int(args.metrics_port),
            metrics_host=args.metrics_host,
            health_port=None if args.health_port is None else int(args.health_port))
        asyncio.run(CloudServer(config).serve())
    except (CachenetError, OSError) as exc:  # OSError: a port that cannot be bound
        print(f"cachenet-cloud: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
