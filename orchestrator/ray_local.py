"""Where a Ray that aavs starts itself listens: 127.0.0.1 only.

``aavs run`` and ``aavs predict --ray`` start a Ray instance when none is named. Ray's defaults bind its
node to the machine's network address, so anyone on the network who reaches its ports could submit
work to it; bound to the loopback address, only this machine's users can. A cluster named on purpose
(``RAY_ADDRESS``: a Ray job, or a cluster the user points at) is joined as it is: its addresses are
its own, and securing it is the cluster's business (cluster/README.md).

Ray has no setting that binds its gRPC servers (GCS, raylet, workers, agents) to one address: measured
with Ray 2.60, they listen on all interfaces whatever ``_node_ip_address`` says, and only the dashboard
(with its job API) follows ``dashboard_host``. What guards those ports is Ray's token authentication,
which Ray 2.60 turns on by default for a new local Ray (the token in ~/.ray/auth_token);
``RAY_AUTH_MODE=disabled`` turns it off, and aavs then says so.

The workers compute with the driver's kernel pins (aavs.orchestrator.recipe.kernels): a Ray started here
inherits this process's environment, a joined cluster's workers get them as the job's ``env_vars``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from aavs.orchestrator.recipe.kernels import worker_env

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def local_ray_kwargs() -> dict[str, Any]:
    """``ray.init`` arguments that start a fresh Ray on the loopback address (never one found running
    on the machine); when ``RAY_ADDRESS`` names the cluster to join, only the kernel pins for its workers."""
    if os.environ.get("RAY_ADDRESS"):
        env = worker_env()
        return {"runtime_env": {"env_vars": env}} if env else {}
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        log.warning(
            "RAY_AUTH_MODE=disabled: the Ray that aavs starts takes work from anyone who reaches "
            "its ports (Ray's gRPC servers listen on all interfaces)"
        )
    return {"address": "local", "_node_ip_address": LOOPBACK, "dashboard_host": LOOPBACK}
