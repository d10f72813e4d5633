"""``cachenet-cloud`` / ``python -m cloud_server``: serve a bundle's full model over gRPC
(and, with ``--diffusion``, generate images with diffusion models).

Settings come from defaults, then ``--config FILE`` (TOML or JSON), then
``CACHENET_*`` environment variables (``CACHENET_BUNDLE``, ``CACHENET_PORT``,
``CACHENET_SPECIALIZE``, ...), then flags; every setting has all three
(:mod:`cachenet.core.settings`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cachenet.core import settings
from cachenet.exceptions import CachenetError
from cloud_server.config import ServerConfig, load_config


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cachenet-cloud", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="TOML or JSON file of settings")
    settings.add_arguments(p, ServerConfig)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(make_parser().parse_args(argv))
    try:
        config = load_config(file=args.pop("config"), **args)
        logging.basicConfig(level=config.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from cloud_server.server import CloudServer

        asyncio.run(CloudServer(config).serve())
    except (CachenetError, OSError) as exc:  # OSError: a port that cannot be bound
        print(f"cachenet-cloud: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
