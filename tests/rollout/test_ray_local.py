"""A local Ray node that times out during start-up is started again; then one clear error."""

from __future__ import annotations

import pytest

from uniapl_mcore.rollout import ray_local

ray = pytest.importorskip("ray")

TIMEOUT = Exception("The current node timed out during startup. This could happen because "
                    "some of the raylet failed to startup or the GCS has become overloaded.")


class _FakeInit:
    """Stands in for ``ray.init``: fails with ``errors`` in turn, then succeeds."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors, self.calls, self.shutdowns = list(errors), [], 0

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.fixture
def fake(monkeypatch):
    def install(errors: list[Exception]) -> _FakeInit:
        f = _FakeInit(errors)
        monkeypatch.setattr(ray, "init", f.init)
        monkeypatch.setattr(ray, "shutdown", f.shutdown)
        return f
    return install


def test_start_up_timeouts_are_retried(fake) -> None:
    f = fake([TIMEOUT, TIMEOUT])
    ray_local.init_local_ray(num_cpus=2)
    assert len(f.calls) == 3 and f.shutdowns == 2
    assert f.calls[-1]["num_cpus"] == 2 and f.calls[-1]["_node_ip_address"] == "127.0.0.1"


def test_the_last_timeout_is_one_clear_error(fake) -> None:
    f = fake([TIMEOUT] * 5)
    with pytest.raises(RuntimeError, match="timed out during start-up 3 times"):
        ray_local.init_local_ray(num_cpus=2)
    assert len(f.calls) == ray_local.RAY_START_ATTEMPTS


def test_other_errors_are_not_retried(fake) -> None:
    f = fake([ValueError("bad num_cpus")])
    with pytest.raises(ValueError, match="bad num_cpus"):
        ray_local.init_local_ray(num_cpus=2)
    assert len(f.calls) == 1
