"""examples/launch_multi_node.sh as two "nodes" on one machine (loopback only), and the Ray
start-up helpers it and the trainer use (uniapl_mcore.runtime.ray_cluster)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from uniapl_mcore.runtime import ray_cluster
from uniapl_mcore.runtime.dist_env import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "launch_multi_node.sh"
TINY_CONFIG = ROOT / "examples" / "tiny_cpu.yaml"

#: A two-step GRPO run of a tiny policy, TP=2, two torch engines of one CPU each.
RUN = ["--max-steps", "2", "prompts_per_step=4", "rollout.samples_per_prompt=2",
       "rollout.sampling.max_new_tokens=12", "rollout.cpus_per_engine=1",
       "rollout.num_engines=2", "eval.at_start=false", "eval.interval_steps=0",
       "train.micro_batch_size=4", "data.max_response_tokens=48", "model.num_layers=2",
       "model.hidden_size=64", "model.ffn_hidden_size=128", "model.head_dim=16",
       "logging.tensorboard=false", "checkpoint.save_at_end=false", "loss.objective=grpo",
       "discriminator.role=none", "parallel.tensor_parallel_size=2"]


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without Ray/torchrun settings that would leak into the script."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MASTER_", "NODE_", "NNODES", "GLOO_"))}
    env.update(PYTHONPATH=str(ROOT), PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)
    return env


def _token_file(directory: Path) -> Path:
    path = directory / "token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------- the launch script itself


def _script(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(TINY_CONFIG), *args], env=env, text=True,
                          capture_output=True, timeout=timeout_s, cwd=ROOT)


@pytest.mark.parametrize("extra, message", [
    ({}, "launch_multi_node.sh: Ray token authentication is on (RAY_AUTH_MODE=token) but no "
         "token is reachable: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"),
    ({"RAY_AUTH_TOKEN_PATH": "/nonexistent/token"},
     "launch_multi_node.sh: RAY_AUTH_TOKEN_PATH=/nonexistent/token is not a readable, non-empty"),
    ({"RAY_AUTH_MODE": "maybe"}, "launch_multi_node.sh: RAY_AUTH_MODE must be 'token' or "
                                 "'disabled', got 'maybe'"),
    ({"NODE_IP": "127.0.0.1", "MASTER_ADDR": "10.0.0.1"},
     "launch_multi_node.sh: NODE_IP=127.0.0.1 is loopback but MASTER_ADDR=10.0.0.1 is not"),
    ({"NODE_RANK": "2"}, "launch_multi_node.sh: NODE_RANK must be <= 1, got 2"),
    ({"RAY_PORT": "x"}, "launch_multi_node.sh: RAY_PORT must be an integer, got 'x'"),
    ({"RAY_AUTH_MODE": "disabled", "PYTHON": "/bin/false"},
     "launch_multi_node.sh: PYTHON=/bin/false cannot import uniapl_mcore and ray"),
])
def test_script_refuses_bad_settings_in_one_line(tmp_path, extra, message):
    env = _clean_env(HOME=str(tmp_path), NNODES="2", NODE_RANK="0", MASTER_ADDR="127.0.0.1",
                     RAY_TMPDIR=str(tmp_path / "ray"))
    env.update(extra)
    result = _script(env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("launch_multi")]
    assert lines[-1].startswith(message), result.stderr
    assert not (tmp_path / "ray").exists()  # refused before Ray started


@pytest.mark.slow
def test_two_nodes_on_loopback_train_tp2_with_engines_on_both(tmp_path):
    """Node 0: Ray head + rendezvous host; node 1 joins both. The trainer runs at TP=2 across
    the two torchrun "nodes" (one process each), its two engines on the two Ray nodes (one
    CPU each, so one engine per node); the token comes from RAY_AUTH_TOKEN_PATH on both."""
    temp = Path(tempfile.mkdtemp(prefix="uray", dir="/tmp"))  # Ray's socket paths are short
    run_dir, token = tmp_path / "run", _token_file(tmp_path)
    common = dict(NNODES="2", MASTER_ADDR="127.0.0.1", NODE_IP="127.0.0.1",
                  NPROC_PER_NODE="1", MASTER_PORT=str(free_port()), RAY_PORT=str(free_port()),
                  RAY_NUM_CPUS="1", RAY_NUM_GPUS="0", RAY_AUTH_TOKEN_PATH=str(token),
                  RAY_WAIT_S="180", RAY_JOIN_S="180", HOME=str(tmp_path))
    nodes = {rank: temp / f"node{rank}" for rank in (0, 1)}
    procs, logs = [], []
    start = time.monotonic()
    try:
        for rank, ray_dir in nodes.items():
            env = _clean_env(**common, NODE_RANK=str(rank), RAY_TMPDIR=str(ray_dir))
            if rank == 0:  # a free client-server port: its default, 10001, may be taken
                env["RAY_START_ARGS"] = \
                    f"--include-dashboard false --ray-client-server-port {free_port()}"
            log = open(tmp_path / f"node{rank}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(subprocess.Popen(
                ["bash", str(SCRIPT), str(TINY_CONFIG), "--run-dir", str(run_dir), *RUN],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True))
        ray_listen, other_listen = _listening_until_exit(procs, list(nodes.values()), 480)
        codes = [p.wait(timeout=5) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
                p.wait(timeout=60)
        for log in logs:
            log.close()
        leftover = {r: [p.pid for p in ray_cluster.processes_under(d)] for r, d in nodes.items()}
        for ray_dir in nodes.values():
            ray_cluster.stop_processes_under(ray_dir)
    elapsed = time.monotonic() - start
    out = {r: (tmp_path / f"node{r}.log").read_text() for r in nodes}
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(
        f"--- node {r} ---\n{text[-4000:]}" for r, text in out.items())
    assert leftover == {0: [], 1: []}, f"Ray processes left running: {leftover}"
    # every Ray server of both nodes listened on loopback only (none on the external address)
    assert ray_listen and all(_loopback_ip(ip) for ip, _ in ray_listen), sorted(ray_listen)
    # torchrun's and the process group's TCPStore listen on the wildcard address (torch has
    # no bind address for them); nothing is bound to the machine's external address
    assert all(_loopback_ip(ip) or ip in ("::", "0.0.0.0") for ip, _ in other_listen), \
        sorted(other_listen)
    print(f"Ray listened on {sorted(ray_listen)}; torchrun / trainers on {sorted(other_listen)}")

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert [r["rollout/weight_version"] for r in records] == [0.0, 1.0]
    assert all(r["data/pref_prompts"] == 4.0 for r in records)
    # one engine actor on each Ray node: its worker's log is in that node's temp dir
    for rank, ray_dir in nodes.items():
        engine_logs = [p for p in (ray_dir / "session_latest" / "logs").glob("worker-*.out")
                       if ":actor_name:EngineActor" in p.read_text(errors="replace")]
        assert len(engine_logs) == 1, f"node {rank}: {len(engine_logs)} engine actors"
    # the second node joined the head on loopback, and both got the same token
    assert "refused" not in out[1]
    print(f"two-node run: {elapsed:.0f} s")
    shutil.rmtree(temp, ignore_errors=True)  # kept on failure: Ray's logs


@pytest.mark.slow
def test_a_node_with_another_token_is_refused_in_one_line(tmp_path):
    """The failure this script had with Ray's token authentication, now named: node 1's
    token differs from the head's, so it stops with one line; node 0 stops waiting for it."""
    temp = Path(tempfile.mkdtemp(prefix="uray", dir="/tmp"))
    common = dict(NNODES="2", MASTER_ADDR="127.0.0.1", NPROC_PER_NODE="1",
                  MASTER_PORT=str(free_port()), RAY_PORT=str(free_port()), RAY_NUM_CPUS="1",
                  RAY_NUM_GPUS="0", RAY_WAIT_S="30", RAY_JOIN_S="60", HOME=str(tmp_path))
    nodes = {rank: temp / f"node{rank}" for rank in (0, 1)}
    procs = []
    try:
        for rank, ray_dir in nodes.items():
            (tmp_path / f"t{rank}").mkdir()
            token = _token_file(tmp_path / f"t{rank}")  # a different token on each node
            env = _clean_env(**common, NODE_RANK=str(rank), RAY_TMPDIR=str(ray_dir),
                             RAY_AUTH_TOKEN_PATH=str(token),
                             RAY_START_ARGS=f"--include-dashboard false --ray-client-server-port "
                                            f"{free_port()}" if rank == 0 else "")
            procs.append(subprocess.Popen(["bash", str(SCRIPT), str(TINY_CONFIG), *RUN], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True, cwd=ROOT, start_new_session=True))
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
                p.wait(timeout=60)
        leftover = {r: [p.pid for p in ray_cluster.processes_under(d)] for r, d in nodes.items()}
        for ray_dir in nodes.values():
            ray_cluster.stop_processes_under(ray_dir)
    assert [p.returncode for p in procs] == [2, 2], outs
    assert ("launch_multi_node.sh: the Ray head at 127.0.0.1:" in outs[1]
            and "refused this node's token: RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH must give the "
                "same token on every node" in outs[1]), outs[1][-3000:]
    assert "launch_multi_node.sh: not every Ray node joined 127.0.0.1:" in outs[0], outs[0][-3000:]
    assert leftover == {0: [], 1: []}, f"Ray processes left running: {leftover}"
    shutil.rmtree(temp, ignore_errors=True)  # kept on failure: Ray's logs


def _loopback_ip(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or \
        ip.startswith("::ffff:127.")


def _listening_until_exit(procs: list[subprocess.Popen], ray_dirs: list[Path], timeout_s: float
                          ) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """Wait for ``procs``; meanwhile sample the TCP sockets that listen: (those of the Ray
    processes of ``ray_dirs``, those of the scripts' other descendants)."""
    import psutil

    ray_listen: set[tuple[str, int]] = set()
    other_listen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        ray_pids = {q.pid for d in ray_dirs for q in ray_cluster.processes_under(d)}
        tree = []
        for p in procs:
            try:
                tree += psutil.Process(p.pid).children(recursive=True)
            except psutil.Error:
                continue
        for proc in [*(psutil.Process(pid) for pid in ray_pids if psutil.pid_exists(pid)),
                     *tree]:
            try:
                conns = proc.net_connections(kind="tcp")
            except psutil.Error:
                continue
            target = ray_listen if proc.pid in ray_pids else other_listen
            target.update((c.laddr.ip, c.laddr.port) for c in conns
                          if c.status == psutil.CONN_LISTEN)
        time.sleep(1.0)
    return ray_listen, other_listen


# ---------------------------------------------------------------- ray_cluster helpers


def _sleeper(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args])


def test_stop_processes_under_stops_only_that_temp_dir(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "mine2"  # a prefix is not a match
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
         "time.sleep(120)", f"--temp-dir={mine}"])
    named, unrelated = _sleeper(f"--logs-dir={mine}/session_x/logs"), _sleeper(str(other))
    try:
        deadline = time.monotonic() + 30
        while len(ray_cluster.processes_under(mine)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)  # the parent's child is on its way
        found = {p.pid for p in ray_cluster.processes_under(mine)}
        assert {parent.pid, named.pid} < found and unrelated.pid not in found
        assert len(found) == 3  # and the parent's child
        stopped = ray_cluster.stop_processes_under(mine, grace_s=3)
        assert set(stopped) >= found
        assert ray_cluster.processes_under(mine) == []
        assert unrelated.poll() is None
    finally:
        for proc in (parent, named, unrelated):
            proc.kill()
            proc.wait()


class _FakeRay:
    """Stands in for ``ray.init`` / ``ray.shutdown`` (the session may hold a real Ray)."""

    def __init__(self, errors: list[BaseException], spawn: bool = False) -> None:
        self.errors, self.spawn, self.calls, self.children = errors, spawn, 0, []

    def init(self, **kwargs):
        import ray

        self.calls += 1
        if self.spawn:  # what a half-started node leaves: a process running Ray's code
            self.children.append(_sleeper(os.path.dirname(ray.__file__)))
        if self.errors:
            raise self.errors.pop(0)

    def shutdown(self):
        pass


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    def make(errors, spawn=False):
        fake = _FakeRay(list(errors), spawn)
        monkeypatch.setattr(ray, "init", fake.init)
        monkeypatch.setattr(ray, "shutdown", fake.shutdown)
        return fake
    return make


def test_init_ray_retries_a_startup_timeout_and_cleans_up(fake_ray):
    fake = fake_ray([Exception("The current node timed out during startup. This could "
                               "happen because some of the raylet failed to startup")],
                    spawn=True)
    ray_cluster.init_ray(None, retry_wait_s=0, num_cpus=1)
    assert fake.calls == 2
    first, second = fake.children
    assert first.wait(timeout=10) is not None  # the failed attempt's process was stopped
    assert second.poll() is None               # the good attempt's was not
    second.kill()
    second.wait()


def test_init_ray_gives_up_with_one_line(fake_ray):
    fake = fake_ray([Exception("The current node timed out during startup.\nTraceback ...")] * 3)
    with pytest.raises(ray_cluster.RayStartError) as info:
        ray_cluster.init_ray("127.0.0.1:6379", attempts=3, retry_wait_s=0)
    assert fake.calls == 3
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not join the Ray cluster at 127.0.0.1:6379: 3 attempts in")
    assert message.endswith("last error: Exception: The current node timed out during startup.")


def test_init_ray_does_not_retry_a_refusal(fake_ray):
    fake = fake_ray([RuntimeError("Failed to connect to GCS. ... AuthenticationError: "
                                  "InvalidAuthToken")])
    with pytest.raises(RuntimeError, match="InvalidAuthToken"):
        ray_cluster.init_ray("127.0.0.1:6379", retry_wait_s=0)
    assert fake.calls == 1


def test_keep_loopback_keeps_only_loopback():
    from ray._private import services

    external = services.resolve_ip_for_localhost("10.1.2.3")
    with ray_cluster.keep_loopback():
        assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
        assert services.resolve_ip_for_localhost("localhost") == "localhost"
        assert services.resolve_ip_for_localhost("10.1.2.3") == external == "10.1.2.3"
        assert services.canonicalize_bootstrap_address("127.0.0.1:6379") == "127.0.0.1:6379"
    assert services.resolve_ip_for_localhost.__name__ == "resolve_ip_for_localhost"
