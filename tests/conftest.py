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
    if not ray.is_initialized():
        from uniapl_mcore.rollout.ray_local import init_local_ray

        init_local_ray(num_cpus=2)  # on loopback, retried if the node is slow to start
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
