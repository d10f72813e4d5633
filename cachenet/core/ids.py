"""What an agent id is: the one rule, for the store's paths, the control plane's calls
and the agents' certificates."""

from __future__ import annotations

import re

from cachenet.core.tensors import excerpt
from cachenet.exceptions import ConfigError

AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_agent_id(agent: object) -> None:
    """ConfigError unless ``agent`` is 1-128 letters, digits, '.', '_' or '-', starting
    with a letter or digit."""
    if not isinstance(agent, str) or not AGENT_ID.match(agent):
        raise ConfigError(f"agent id {excerpt(agent)} must be 1-128 letters, digits, '.', '_' "
                          "or '-', starting with a letter or digit")
