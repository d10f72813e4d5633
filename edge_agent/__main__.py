"""``cachenet-edge`` / ``python -m edge_agent``: the edge agent daemon.

Settings come from defaults, then ``--config FILE`` (JSON or TOML), then
``CACHENET_*`` environment variables (``CACHENET_BUNDLE``, ``CACHENET_CLOUD``,
``CACHENET_BIND``, ``CACHENET_DEADLINE_MS``, ...), then flags.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cachenet.exceptions import CachenetError


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cachenet-edge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="JSON or TOML file of settings")
    p.add_argument("--bundle", type=Path, help="cache bundle directory")
    p.add_argument("--bind", help="ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555 (port 0: any)")
    p.add_argument("--cloud", help="cloud server host:port: its control plane, and where "
                   "escalations go; a list ip:port,ip:port or dns:///NAME:PORT balances over "
                   "replicas (omit for edge only)")
    p.add_argument("--escalate", choices=["cachenet", "oip"],
                   help="the escalation target's protocol: cachenet.v1 (default) or the Open "
                   "Inference Protocol (Triton, KServe, MLServer)")
    p.add_argument("--escalate-to", help="where escalations go, if not --cloud (same forms)")
    p.add_argument("--escalate-model", help="the full model's name on the OIP server")
    p.add_argument("--escalate-model-version", help="and its version (default: the server's)")
    p.add_argument("--escalate-input", help="the model's input name there (default input)")
    p.add_argument("--escalate-output",
                   help="its output of N x K logits (default logits); labels and confidences "
                   "are derived from it")
    p.add_argument("--deadline-ms", type=float, help="escalation deadline (default 250)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default 1)")
    p.add_argument("--precision", choices=["fp32", "int8"])
    p.add_argument("--agent-id")
    p.add_argument("--ready-file", type=Path, help="write {endpoint, pid} here once serving")
    p.add_argument("--no-layer-cache", dest="layer_cache", action="store_false", default=None,
                   help="ignore the bundle's layer caches")
    p.add_argument("--no-label-shift", dest="label_shift", action="store_false", default=None,
                   help="do not re-weight the cache model by the stream's class prior")
    p.add_argument("--audit-rate", type=float,
                   help="share of edge answers also checked by the cloud (default 0.02)")
    p.add_argument("--trusted-key", type=Path,
                   help="the fleet's public key (signing.pub): refuse bundles it does not verify")
    p.add_argument("--allow-rollback", action="store_true", default=None,
                   help="accept a pushed bundle older than the running one")
    for side, what in (("ca", "the fleet's CA"), ("cert", "this agent's certificate"),
                       ("key", "this agent's private key")):
        p.add_argument(f"--tls-{side}", type=Path, help=f"TLS to the cloud: {what} (PEM)")
    p.add_argument("--spool-dir", type=Path,
                   help="where inputs answered while the cloud was away wait to be uploaded "
                   "(default .spool beside the bundle)")
    p.add_argument("--no-spool", dest="spool", action="store_false", default=None,
                   help="drop them instead")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics on this port (0: any; default: off)")
    p.add_argument("--metrics-host", help="address the metrics port binds (default 127.0.0.1)")
    p.add_argument("--log-level")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from edge_agent.agent import EdgeAgent
    from edge_agent.config import load_config

    try:
        config = load_config(file=args.config, bundle=args.bundle, bind=args.bind,
                             cloud=args.cloud, deadline_ms=args.deadline_ms,
                             threads=args.threads, precision=args.precision,
                             agent_id=args.agent_id, ready_file=args.ready_file,
                             log_level=args.log_level, layer_cache=args.layer_cache,
                             label_shift=args.label_shift, audit_rate=args.audit_rate,
                             trusted_key=args.trusted_key, allow_rollback=args.allow_rollback,
                             tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                             spool_dir=args.spool_dir, spool=args.spool,
                             escalate=args.escalate, escalate_to=args.escalate_to,
                             escalate_model=args.escalate_model,
                             escalate_model_version=args.escalate_model_version,
                             escalate_input=args.escalate_input,
                             escalate_output=args.escalate_output,
                             metrics_port=args.metrics_port, metrics_host=args.metrics_host)
        logging.basicConfig(level=config.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        EdgeAgent(config).serve()
    except (CachenetError, OSError) as exc:  # OSError: a port that cannot be bound
        print(f"cachenet-edge: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
