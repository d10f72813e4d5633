"""``cachenet keys`` (a fleet's signing key pair), ``cachenet sign`` (a bundle, in place)
and ``cachenet certs`` (a fleet's TLS certificates)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_signing(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keys", help="make an Ed25519 key pair that signs a fleet's bundles",
                       description="Write signing.key (private, mode 0600: the cloud's, "
                       "--signing-key) and signing.pub (the agents', --trusted-key).")
    k.add_argument("--out", type=Path, required=True, help="folder to write them to")
    k.set_defaults(func=_run_keys)
    s = sub.add_parser("sign", help="sign a bundle in place with a fleet's private key",
                       description="Sign a bundle's manifest (what a device receives of it), "
                       "for agents that trust signed bundles only.")
    s.add_argument("bundle", type=Path)
    s.add_argument("--key", type=Path, required=True, help="signing.key of cachenet keys")
    s.set_defaults(func=_run_sign)
    c = sub.add_parser("certs", help="make a fleet's TLS certificates (CA, cloud, agents)",
                       description="A CA, the cloud's certificate (for --hosts) and one client "
                       "certificate per agent (its id as the common name), for mutual TLS.")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--agents", required=True, help="comma-separated agent ids")
    c.add_argument("--hosts", default="localhost,127.0.0.1",
                   help="names and addresses agents dial the cloud by (comma-separated)")
    c.set_defaults(func=_run_certs)


def _run_certs(args: argparse.Namespace) -> int:
    from cachenet.protocol.tls import make_fleet_certs

    agents = [a for a in args.agents.split(",") if a]
    hosts = [h for h in args.hosts.split(",") if h]
    written = make_fleet_certs(args.out, agents, hosts)
    print(f"wrote {len(written)} certificates with their keys to {args.out}: "
          f"{', '.join(p.name for p in written.values())}")
    return 0


def _run_keys(args: argparse.Namespace) -> int:
    from cachenet.core.signing import generate_keys

    private, public = generate_keys(args.out)
    print(f"wrote {private} (keep it on the cloud) and {public} (give it to the agents)")
    return 0


def _run_sign(args: argparse.Namespace) -> int:
    from cachenet.core.bundle import verify_bundle
    from cachenet.core.signing import load_private_key, sign_bundle

    manifest = verify_bundle(args.bundle)
    sign_bundle(args.bundle, load_private_key(args.key))
    verify_bundle(args.bundle)
    print(f"signed {args.bundle} (version {manifest.version})")
    return 0
