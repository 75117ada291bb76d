"""The GPU image's pins (Dockerfile ARGs) against setup.py and against the PyPI metadata
recorded in docker/pins.lock.json — offline, no Docker engine (docker/check_pins.py)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pins_tool():
    spec = importlib.util.spec_from_file_location("uniapl_check_pins",
                                                  ROOT / "docker" / "check_pins.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def lock() -> dict:
    return json.loads((ROOT / "docker" / "pins.lock.json").read_text())


@pytest.fixture(scope="module")
def setup(pins_tool):
    return pins_tool.setup_requirements((ROOT / "setup.py").read_text())


def test_dockerfile_pins_agree_with_setup_py(pins_tool, dockerfile, setup):
    pins = pins_tool.dockerfile_pins(dockerfile)
    assert pins == {"torch": "2.10.0", "vllm": "0.19.1", "transformer-engine": "2.11.0",
                    "megatron-core": "0.16.1", "ray": "2.60.0"}
    megatron = next(r for r in setup["install_requires"] if r.name == "megatron-core")
    assert str(megatron.specifier) == f"=={pins['megatron-core']}"
    assert pins_tool.check_setup(pins, setup) == []
    assert pins_tool.cuda_image_version(dockerfile) == (12, 8)


def test_pins_agree_with_recorded_metadata(pins_tool, dockerfile, lock, setup):
    """vLLM's exact torch pin is the image's torch, torch's CUDA runtime the base image's,
    Transformer Engine inside megatron-core's range, and the recorded resolution of the
    whole GPU set (212 distributions) holds exactly the pinned versions."""
    assert pins_tool.check_lock(dockerfile, lock, setup) == []
    assert "torch==2.10.0" in lock["packages"]["vllm"]["requires_dist"]
    assert lock["resolved"]["torch"] == "2.10.0"
    assert lock["resolved"]["transformer-engine-cu12"] == "2.11.0"


def test_inconsistent_pins_are_reported(pins_tool, dockerfile, lock, setup):
    older_torch = dockerfile.replace("TORCH_VERSION=2.10.0", "TORCH_VERSION=2.9.1")
    (problem,) = pins_tool.check_lock(older_torch, lock, setup)
    assert problem.startswith("torch==2.9.1 is pinned but the lock records 2.10.0")
    stale = copy.deepcopy(lock)
    stale["packages"]["torch"]["version"] = "2.9.1"
    problems = pins_tool.check_lock(older_torch, stale, setup)
    assert "vllm==0.19.1 pins torch==2.10.0, the image installs torch==2.9.1" in problems
    newer_te = dockerfile.replace("TRANSFORMER_ENGINE_VERSION=2.11.0",
                                  "TRANSFORMER_ENGINE_VERSION=2.12.0")
    stale = copy.deepcopy(lock)
    stale["packages"]["transformer-engine"]["version"] = "2.12.0"
    assert pins_tool.check_lock(newer_te, stale, setup) == [
        "transformer-engine==2.12.0 is outside megatron-core==0.16.1's range <2.12.0,>=2.9.0a0"]
    assert pins_tool.check_setup(pins_tool.dockerfile_pins(newer_te), setup) == [
        "setup.py extra 'gpu' pins transformer-engine==2.11.0, the Dockerfile 2.12.0"]
    cuda13 = dockerfile.replace("nvidia/cuda:12.8.1", "nvidia/cuda:13.0.1")
    problems = pins_tool.check_lock(cuda13, lock, setup)
    assert any("is built for CUDA runtime 12.8.90, the base image is CUDA 13.0" in p
               for p in problems)


def test_dockerfile_installs_in_the_order_the_pins_need(dockerfile):
    """vLLM (and its torch) first, torch held by a constraint, Transformer Engine compiled
    against it without build isolation, then megatron-core, Ray and the package, checked."""
    runs = re.sub(r"\\\n", " ", dockerfile)
    vllm = runs.index('pip install "vllm==${VLLM_VERSION}" "torch==${TORCH_VERSION}"')
    te = runs.index("pip install --no-build-isolation")
    package = runs.index("pip install -e .")
    assert vllm < te < package
    assert "printf 'torch==%s\\n' \"${TORCH_VERSION}\" > /etc/pip-constraints.txt" in runs
    assert '"transformer-engine[pytorch,core_cu12]==${TRANSFORMER_ENGINE_VERSION}"' in runs
    assert '"megatron-core==${MEGATRON_CORE_VERSION}" "ray==${RAY_VERSION}"' in runs
    assert "pip check" in runs and "python docker/check_pins.py --installed" in runs
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", dockerfile, re.MULTILINE)


def test_installed_check_compares_public_versions(pins_tool, monkeypatch):
    versions = {"torch": "2.10.0+cu128", "vllm": "0.19.1", "transformer-engine": "2.11.0",
                "megatron-core": "0.16.1", "ray": "2.59.0"}
    monkeypatch.setattr(pins_tool.importlib.metadata, "version", versions.__getitem__)
    pins = {"torch": "2.10.0", "vllm": "0.19.1", "transformer-engine": "2.11.0",
            "megatron-core": "0.16.1", "ray": "2.60.0"}
    assert pins_tool.check_installed(pins) == [
        "ray 2.59.0 is installed, the Dockerfile pins 2.60.0"]


def test_readme_documents_the_image():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Docker (GPU)"):]
    assert "docker build -t uniapl-mcore:gpu ." in section
    assert "torchrun" in section and "--nnodes" in section
    assert "examples/launch_multi_node.sh" in section
