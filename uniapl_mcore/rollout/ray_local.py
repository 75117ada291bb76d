"""Starting a local Ray node that survives a slow start-up.

Ray waits a fixed 30 s for a new node's raylet to register with the GCS and then raises
"The current node timed out during startup"; on a loaded machine (a full test run on 2
cores) that happens now and then.  :func:`init_local_ray` tries again, and after the last
attempt raises one clear error.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

#: How many times a local Ray node is started before giving up.
RAY_START_ATTEMPTS = 3
_TIMEOUT_TEXT = "timed out during startup"


def init_local_ray(num_cpus: int, attempts: int = RAY_START_ATTEMPTS) -> None:
    """``ray.init`` of a ``num_cpus``-CPU local node on loopback, retried on start-up timeouts.

    Raises ``RuntimeError`` naming the cause after ``attempts`` timed-out starts; any other
    error from Ray is raised at once.
    """
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")  # fmt: skip
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception here
            if _TIMEOUT_TEXT not in str(exc):
                raise
            logger.warning("local Ray node timed out during start-up (attempt %d of %d)",
                           attempt, attempts)  # fmt: skip
            ray.shutdown()
            if attempt == attempts:
                raise RuntimeError(
                    f"could not start a local Ray node: it timed out during start-up {attempts} "
                    "times (Ray waits 30 s for the raylet each time); the machine is overloaded"
                ) from exc
