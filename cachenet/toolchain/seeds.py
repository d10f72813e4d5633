"""Training seeds, and the one setting that shifts every one of them.

Seeded training repeats on one machine, not across machines: another CPU (its
instruction set, thread count, library kernels) trains another model from the
same seed. A test that passes for one training outcome only passes by luck. So
every seed cachenet trains with (weights' initialisation, batch order,
augmentation, partition fine-tuning, layer-cache heads and tables, denoisers,
routers) goes through :func:`training_seed`, which adds
``CACHENET_SEED_OFFSET`` (default 0). CI draws a random offset for each run,
so a test that needs one outcome fails there, not for a user.

With an offset, trained models are cached under other keys (:func:`key_parts`),
so a model trained under one offset is never reused under another.
"""

from __future__ import annotations

import os

from cachenet.exceptions import ConfigError

SEED_OFFSET_ENV = "CACHENET_SEED_OFFSET"
_MAX_OFFSET = 2**31


def seed_offset() -> int:
    """The offset ``CACHENET_SEED_OFFSET`` sets (0 when unset or empty)."""
    raw = os.environ.get(SEED_OFFSET_ENV, "").strip()
    if not raw:
        return 0
    try:
        offset = int(raw)
    except ValueError:
        raise ConfigError(f"{SEED_OFFSET_ENV} must be an integer, got {raw!r:.40}") from None
    if not 0 <= offset < _MAX_OFFSET:
        raise ConfigError(f"{SEED_OFFSET_ENV} must lie in [0, 2^31), got {offset}")
    return offset


def training_seed(seed: int) -> int:
    """The seed to train with for the configured ``seed``: shifted by the offset."""
    return int(seed) + seed_offset()


def key_parts() -> list[str]:
    """What a cache key of a trained model adds for the offset: nothing at 0, so models
    cached (and reference checkpoints committed) before offsets existed keep their keys."""
    offset = seed_offset()
    return [f"seed-offset={offset}"] if offset else []
