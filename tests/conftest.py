"""Shared pytest setup: the CPU execution layer never leaks between tests; one local Ray
cluster for every test that needs one (Ray start-up is slow), shut down at the end."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_leaked_cpu_layer():
    yield
    from uniapl_mcore.runtime.cpu_layer import active_layer

    layer = active_layer()
    if layer is not None:
        layer.disable()
        pytest.fail("a test left the CPU execution layer enabled")


@pytest.fixture(scope="session")
def ray_cluster():
    """The GCS address of a 2-CPU local Ray cluster on loopback."""
    ray = pytest.importorskip("ray")
    from uniapl_mcore.runtime.ray_cluster import init_ray

    if not ray.is_initialized():  # start-up timeouts under load are retried
        init_ray(None, num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")  # keep test traffic on loopback
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
