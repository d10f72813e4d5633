"""What a link does to the bytes crossing it: delay, jitter, a bandwidth cap, cuts and stalls.

A :class:`LinkProfile` is a plain value. It is frozen so that a running
:class:`~cachenet.sim.wan.proxy.WanProxy` never sees it change behind its back: to
change the link, build a new profile (``dataclasses.replace``) and hand it to
``configure``, which is also the moment the proxy wakes held data or cuts
connections.

Every figure applies to each direction on its own: ``delay_ms`` is the one-way
delay, so a request and its answer see a round trip of about ``2 * delay_ms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cachenet.exceptions import ConfigError

#: Preset links by name, as (rtt_ms, jitter_ms, bandwidth_kbps); "offline" is
#: handled on its own because it is a cut link, not a slow one.
_PRESETS: dict[str, tuple[float, float, float | None]] = {
    "lan": (1.0, 0.0, None),
    "wifi": (10.0, 2.0, None),
    "4g": (40.0, 5.0, 20_000.0),
    "3g": (150.0, 20.0, 1_500.0),
}
_OFFLINE = "offline"


@dataclass(frozen=True)
class LinkProfile:
    """One emulated link, applied to each direction of every connection through the proxy.

    ``jitter_ms`` adds a uniform sample in ``[-jitter_ms, +jitter_ms]`` to the
    delay of each chunk, but never lets a chunk overtake the one before it: a
    TCP stream is ordered, and reordering would corrupt it. ``bandwidth_kbps``
    (kilobits per second) adds each chunk's serialisation time, queued behind
    the chunks before it. ``drop`` cuts the link: connections are reset.
    ``stall`` holds data in the proxy until a profile without it is configured.
    ``stall_rate`` is the share of chunks held for ``stall_ms`` more (transient
    stalls, as on a congested link). ``seed`` makes the jitter and stalls repeatable.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_kbps: float | None = None
    drop: bool = False
    stall: bool = False
    seed: int | None = None
    stall_rate: float = 0.0
    stall_ms: float = 0.0

    def __post_init__(self) -> None:
        # Fail here, where the caller wrote the bad number, rather than as an
        # odd timing inside the proxy's event loop much later.
        if not _is_number(self.stall_rate) or not 0.0 <= self.stall_rate <= 1.0:
            raise ConfigError(f"LinkProfile.stall_rate must lie in [0, 1], got "
                              f"{self.stall_rate!r}")
        for name in ("delay_ms", "jitter_ms", "stall_ms"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"LinkProfile.{name} must be a finite number >= 0, got {value!r}")
        bw = self.bandwidth_kbps
        if bw is not None and (not _is_number(bw) or not math.isfinite(bw) or bw <= 0):
            raise ConfigError(
                f"LinkProfile.bandwidth_kbps must be a finite number > 0 or None "
                f"(no cap), got {bw!r}"
            )

    @classmethod
    def from_rtt(
        cls, rtt_ms: float, jitter_ms: float = 0.0, bandwidth_kbps: float | None = None
    ) -> LinkProfile:
        """A link whose round trip is ``rtt_ms``: half of it is spent each way."""
        if not _is_number(rtt_ms) or not math.isfinite(rtt_ms) or rtt_ms < 0:
            raise ConfigError(f"rtt_ms must be a finite number >= 0, got {rtt_ms!r}")
        return cls(delay_ms=rtt_ms / 2.0, jitter_ms=jitter_ms, bandwidth_kbps=bandwidth_kbps)

    @classmethod
    def named(cls, name: str) -> LinkProfile:
        """A preset link: "lan", "wifi", "4g", "3g" or "offline" (a cut link)."""
        key = name.strip().lower()
        if key == _OFFLINE:
            return cls(drop=True)
        try:
            rtt, jitter, bandwidth = _PRESETS[key]
        except KeyError:
            known = ", ".join([*_PRESETS, _OFFLINE])
            raise ConfigError(f"unknown link profile {name!r}; known: {known}") from None
        return cls.from_rtt(rtt, jitter, bandwidth)

    @property
    def rtt_ms(self) -> float:
        """The round trip this link adds, before jitter and serialisation: two one-way delays."""
        return 2.0 * self.delay_ms


def _is_number(value: object) -> bool:
    # bool is an int, but True as a delay is a bug, not one millisecond.
    return isinstance(value, (int, float)) and not isinstance(value, bool)
