"""An emulated wide-area network: a TCP proxy that delays, throttles, stalls or cuts a link.

The edge and the cloud talk over TCP. To see how cachenet behaves over a slow
or failing link without a real one, put a :class:`WanProxy` between them and
give it a :class:`LinkProfile`; :class:`ProxyThread` runs one for synchronous
callers such as tests and demos. Standard library only, so it runs on the edge.
"""

from __future__ import annotations

from cachenet.sim.wan.profile import LinkProfile
from cachenet.sim.wan.proxy import WanProxy
from cachenet.sim.wan.thread import ProxyThread

__all__ = ["LinkProfile", "ProxyThread", "WanProxy"]
