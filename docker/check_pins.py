#!/usr/bin/env python3
"""Check that the GPU image's pins work together, without a Docker engine.

The pins live in one place, the ``ARG *_VERSION`` lines of the repository's ``Dockerfile``;
``setup.py`` (``megatron-core``, ``ray``, the ``gpu`` extra) must agree with them. Three
modes:

``python docker/check_pins.py``
    Offline. Dockerfile ↔ setup.py agreement, and the Dockerfile against the package
    metadata recorded in ``docker/pins.lock.json``: vLLM's exact ``torch==`` pin is the
    image's torch, torch's CUDA runtime is the base image's CUDA, Transformer Engine is in
    megatron-core's supported range and its core wheel matches that CUDA major, every
    Requires-Dist of a pinned package that names another pinned package is satisfied, and the
    recorded resolution holds exactly the pinned versions. (``tests/test_docker_pins.py``.)
``python docker/check_pins.py --resolve [--write-lock]``
    Needs PyPI. Resolves the whole GPU set with pip's resolver for the image's platform
    (``pip install --dry-run --report --only-binary=:all: --platform manylinux… --python-version
    3.12``), reads each pinned package's metadata from the report, runs the offline checks on
    it, and with ``--write-lock`` records it in ``docker/pins.lock.json``.
``python docker/check_pins.py --installed``
    Inside the built image: the installed distributions have the pinned versions.

Exit status 0 when every check passes, 1 otherwise (one line per failure).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SETUP_PY = ROOT / "setup.py"
LOCK = Path(__file__).resolve().parent / "pins.lock.json"

#: Dockerfile ARG → distribution it pins.
PINNED_ARGS = {
    "TORCH_VERSION": "torch",
    "VLLM_VERSION": "vllm",
    "TRANSFORMER_ENGINE_VERSION": "transformer-engine",
    "MEGATRON_CORE_VERSION": "megatron-core",
    "RAY_VERSION": "ray",
}
#: Wheel tags of the image (Ubuntu 24.04: glibc 2.39; CPython 3.12, x86-64).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in (17, 24, 27, 28, 31, 34, 35, 39)] + \
    ["manylinux2014_x86_64", "linux_x86_64"]
#: Requirements only available as source distributions: pip's binary-only resolution for
#: another platform cannot take them; the image builds them (transformer-engine-torch
#: against the image's torch, with --no-build-isolation).
SOURCE_ONLY = {"langdetect", "transformer-engine-torch"}


# --------------------------------------------------------------------------- parsing


def dockerfile_args(text: str) -> dict[str, str]:
    """``ARG NAME=value`` defaults of a Dockerfile (quotes stripped; continuation lines
    joined; ARGs without a default are left out)."""
    joined = re.sub(r"\\\n", " ", text)
    out: dict[str, str] = {}
    for line in joined.splitlines():
        match = re.match(r"\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)", line)
        if match:
            out[match.group(1)] = match.group(2).strip("\"'")
    return out


def dockerfile_pins(text: str) -> dict[str, str]:
    """Distribution name → pinned version, from the ``PINNED_ARGS`` lines."""
    args = dockerfile_args(text)
    missing = [name for name in PINNED_ARGS if name not in args]
    if missing:
        raise ValueError(f"Dockerfile: no ARG default for {', '.join(missing)}")
    return {dist: args[arg] for arg, dist in PINNED_ARGS.items()}


def cuda_image_version(text: str) -> tuple[int, int]:
    """(major, minor) CUDA of the base image ``ARG CUDA_IMAGE=nvidia/cuda:12.8.1-…``."""
    image = dockerfile_args(text).get("CUDA_IMAGE", "")
    match = re.search(r"nvidia/cuda:(\d+)\.(\d+)", image)
    if not match:
        raise ValueError(f"Dockerfile: CUDA_IMAGE {image!r} is not an nvidia/cuda:X.Y… image")
    return int(match.group(1)), int(match.group(2))


def setup_requirements(text: str) -> dict[str, list[Requirement]]:
    """``install_requires`` (string literals only; the computed torch requirement is left
    out) and each ``EXTRAS`` entry of setup.py, parsed without running it."""
    tree = ast.parse(text)
    out: dict[str, list[Requirement]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "EXTRAS" for t in node.targets):
            extras = ast.literal_eval(node.value)
            for name, reqs in extras.items():
                out[f"extra:{name}"] = [Requirement(r) for r in reqs]
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            assert isinstance(node.value, ast.List)
            out["install_requires"] = [Requirement(elt.value) for elt in node.value.elts
                                       if isinstance(elt, ast.Constant)]
    return out


def _named(reqs: list[Requirement], dist: str) -> Requirement | None:
    return next((r for r in reqs if canonicalize_name(r.name) == canonicalize_name(dist)),
                None)


def _exact(req: Requirement | None) -> str | None:
    """The version of an ``==`` requirement (None for anything else)."""
    if req is None:
        return None
    specs = list(req.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


# --------------------------------------------------------------------------- checks


def check_setup(pins: dict[str, str], setup: dict[str, list[Requirement]]) -> list[str]:
    """setup.py must pin megatron-core and ray as the image does, and its ``gpu`` extra must
    pin vLLM and Transformer Engine (with a core wheel) at the image's versions."""
    problems = []
    base = setup.get("install_requires", [])
    for dist in ("megatron-core", "ray"):
        got = _exact(_named(base, dist))
        if got != pins[dist]:
            problems.append(f"setup.py install_requires pins {dist}=={got}, the Dockerfile "
                            f"{pins[dist]}")
    gpu = setup.get("extra:gpu", [])
    for dist in ("vllm", "transformer-engine"):
        got = _exact(_named(gpu, dist))
        if got != pins[dist]:
            problems.append(f"setup.py extra 'gpu' pins {dist}=={got}, the Dockerfile "
                            f"{pins[dist]}")
    te = _named(gpu, "transformer-engine")
    if te is not None and "pytorch" not in te.extras:
        problems.append("setup.py extra 'gpu': transformer-engine needs its [pytorch] extra")
    return problems


def _requires(lock: dict[str, Any], dist: str) -> list[Requirement]:
    entry = lock["packages"].get(canonicalize_name(dist))
    if entry is None:
        return []
    return [Requirement(r) for r in entry["requires_dist"]]


def _applies(req: Requirement, extras: set[str]) -> bool:
    """Whether ``req`` applies on the image (Linux x86-64, CPython 3.12) with ``extras``."""
    if req.marker is None:
        return True
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))


def check_lock(text: str, lock: dict[str, Any], setup: dict[str, list[Requirement]]
               ) -> list[str]:
    """The Dockerfile against recorded metadata (see the module doc)."""
    pins = dockerfile_pins(text)
    problems = []
    for dist, version in pins.items():
        entry = lock["packages"].get(canonicalize_name(dist))
        if entry is None or entry["version"] != version:
            got = entry["version"] if entry else "nothing"
            problems.append(f"{dist}=={version} is pinned but the lock records {got}: re-run "
                            "python docker/check_pins.py --resolve --write-lock")
    if problems:
        return problems
    torch_pin = _exact(_named(_requires(lock, "vllm"), "torch"))
    if torch_pin != pins["torch"]:
        problems.append(f"vllm=={pins['vllm']} pins torch=={torch_pin}, the image installs "
                        f"torch=={pins['torch']}")
    cuda = cuda_image_version(text)
    runtime = _exact(_named(_requires(lock, "torch"), "nvidia-cuda-runtime-cu12"))
    if runtime is None or tuple(int(p) for p in runtime.split(".")[:2]) != cuda:
        problems.append(f"torch=={pins['torch']} is built for CUDA runtime {runtime}, the base "
                        f"image is CUDA {cuda[0]}.{cuda[1]}")
    te_range = next((r for r in _requires(lock, "megatron-core")
                     if canonicalize_name(r.name) == "transformer-engine"), None)
    if te_range is None or not te_range.specifier.contains(pins["transformer-engine"],
                                                          prereleases=True):
        problems.append(f"transformer-engine=={pins['transformer-engine']} is outside "
                        f"megatron-core=={pins['megatron-core']}'s range "
                        f"{te_range.specifier if te_range else '(none recorded)'}")
    core = f"transformer-engine-cu{cuda[0]}"
    if canonicalize_name(core) not in lock["packages"]:
        problems.append(f"the lock has no {core} (Transformer Engine's core wheel for the "
                        f"image's CUDA {cuda[0]})")
    problems += _check_cross_requirements(lock, pins)
    problems += _check_resolution(lock, setup)
    return problems


def _check_cross_requirements(lock: dict[str, Any], pins: dict[str, str]) -> list[str]:
    """Every Requires-Dist of a recorded package that names a pinned distribution (and
    applies on the image) admits the pinned version."""
    problems = []
    pinned = {canonicalize_name(d): v for d, v in pins.items()}
    for name, entry in lock["packages"].items():
        for text in entry["requires_dist"]:
            req = Requirement(text)
            target = canonicalize_name(req.name)
            if target in pinned and _applies(req, set(entry.get("extras", []))) and \
                    not req.specifier.contains(pinned[target], prereleases=True):
                problems.append(f"{name}=={entry['version']} requires {text}, the image pins "
                                f"{target}=={pinned[target]}")
    return problems


def _check_resolution(lock: dict[str, Any], setup: dict[str, list[Requirement]]) -> list[str]:
    """The recorded resolution satisfies setup.py's own requirements (where resolved)."""
    problems = []
    resolved = lock.get("resolved", {})
    for req in setup.get("install_requires", []):
        version = resolved.get(canonicalize_name(req.name))
        if version is not None and not req.specifier.contains(version, prereleases=True):
            problems.append(f"setup.py requires {req}, the GPU set resolves "
                            f"{req.name}=={version}")
    return problems


def check_installed(pins: dict[str, str]) -> list[str]:
    """Installed distributions against the pins (local version labels like +cu128 ignored)."""
    problems = []
    for dist, version in pins.items():
        try:
            got = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{dist} is not installed (pinned {version})")
            continue
        if Version(got).public != Version(version).public:
            problems.append(f"{dist} {got} is installed, the Dockerfile pins {version}")
    return problems


# --------------------------------------------------------------------------- resolving


def resolve(pins: dict[str, str], setup: dict[str, list[Requirement]],
            pip: list[str]) -> dict[str, Any]:
    """Resolve the image's package set with pip for the image's platform (metadata only,
    nothing installed) and return the lock: every resolved version, and the Requires-Dist of
    the pinned distributions and their core wheels."""
    cuda_major = "12"
    wanted = [f"vllm=={pins['vllm']}", f"torch=={pins['torch']}",
              f"transformer-engine[core_cu{cuda_major}]=={pins['transformer-engine']}",
              f"megatron-core=={pins['megatron-core']}", f"ray=={pins['ray']}"]
    wanted += [str(r) for r in setup.get("install_requires", [])
               if canonicalize_name(r.name) not in SOURCE_ONLY | {canonicalize_name(d)
                                                                   for d in pins}]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [*pip, "install", "--dry-run", "--quiet", "--ignore-installed",
               "--report", str(report), "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none"]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        subprocess.run(cmd + wanted, check=True)
        data = json.loads(report.read_text())
    keep = {canonicalize_name(d) for d in pins} | {f"transformer-engine-cu{cuda_major}"}
    packages, resolved = {}, {}
    for item in data["install"]:
        meta = item["metadata"]
        name = canonicalize_name(meta["name"])
        resolved[name] = meta["version"]
        if name in keep:
            packages[name] = {"version": meta["version"],
                              "requires_dist": meta.get("requires_dist", []),
                              "extras": item.get("requested_extras") or [],
                              "wheel": item["download_info"]["url"].rsplit("/", 1)[-1]}
    return {"generated_by": "python docker/check_pins.py --resolve --write-lock",
            "python": "3.12", "platforms": PLATFORMS, "requested": wanted,
            "source_only_not_resolved": sorted(SOURCE_ONLY), "packages": packages,
            "resolved": dict(sorted(resolved.items()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resolve", action="store_true", help="resolve with pip (needs PyPI)")
    mode.add_argument("--installed", action="store_true", help="check installed versions")
    parser.add_argument("--write-lock", action="store_true", help="with --resolve: record it")
    parser.add_argument("--pip", default=f"{sys.executable} -m pip",
                        help="pip command for --resolve (a recent pip)")
    args = parser.parse_args(argv)
    text = DOCKERFILE.read_text()
    pins = dockerfile_pins(text)
    setup = setup_requirements(SETUP_PY.read_text())
    if args.installed:
        problems = check_installed(pins)
    else:
        problems = check_setup(pins, setup)
        if args.resolve:
            lock = resolve(pins, setup, args.pip.split())
            if args.write_lock:
                LOCK.write_text(json.dumps(lock, indent=1) + "\n")
        else:
            lock = json.loads(LOCK.read_text())
        problems += check_lock(text, lock, setup)
    for problem in problems:
        print(f"check_pins: {problem}")
    if not problems:
        print("check_pins: ok: " + ", ".join(f"{d}=={v}" for d, v in pins.items()))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
