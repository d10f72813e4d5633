"""Step caches for diffusion models: the ``POLICIES`` registry and its members.

* ``none`` (:class:`~cachenet.diffusion.stepcache.base.StepCache`): every step in full;
* ``deepcache`` (:mod:`.deepcache`): a U-Net's deep features reused between full steps;
* ``fora`` (:mod:`.fora`): every DiT branch reused for ``interval - 1`` steps;
* ``l2c`` (:mod:`.l2c`): a learned per-step, per-layer schedule for a DiT.

Adding a policy is one module: a ``Config`` dataclass and a :class:`StepCache`
subclass decorated with :func:`register`, imported here.
"""

from cachenet.diffusion.stepcache import deepcache, fora, l2c  # noqa: F401 - registers
from cachenet.diffusion.stepcache.base import POLICIES, StepCache, open_session, register

__all__ = ["POLICIES", "StepCache", "open_session", "register"]
