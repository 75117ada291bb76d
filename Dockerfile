# syntax=docker/dockerfile:1
# GPU image for uniapl_mcore: CUDA 12.8, Python 3.12, and torch / vLLM / Transformer Engine /
# megatron-core / Ray at versions that work together.
#
#   docker build -t uniapl-mcore:gpu .
#   docker run --rm --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#       uniapl-mcore:gpu python tools/bench/gpu_mfu.py
#
# The pins are the ARG *_VERSION lines below and nowhere else in this file. The hard
# constraint: vLLM's wheel requires one exact torch (vllm 0.19.1: torch==2.10.0, a CUDA 12.8
# build), and Transformer Engine's PyTorch extension (transformer-engine-torch, a source
# distribution) must be compiled against that same torch; megatron-core 0.16.1 supports
# Transformer Engine >= 2.9, < 2.12. So: vLLM first (it brings its torch), a pip constraint
# that keeps that torch, then Transformer Engine built without build isolation against it.
# docker/check_pins.py checks the pins against PyPI metadata without a Docker engine;
# docker/PINS.md records what was run and what it showed.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.10.0
ARG VLLM_VERSION=0.19.1
ARG TRANSFORMER_ENGINE_VERSION=2.11.0
ARG MEGATRON_CORE_VERSION=0.16.1
ARG RAY_VERSION=2.60.0
# GPU architectures the Transformer Engine extension is compiled for (9.0: H100 / H200,
# 10.0: B200); fewer build faster. MAX_JOBS bounds parallel compile jobs (memory).
ARG CUDA_ARCHS="90;100"
ARG MAX_JOBS=8

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    CUDA_HOME=/usr/local/cuda \
    CUDA_DEVICE_MAX_CONNECTIONS=1

# Python 3.12 is Ubuntu 24.04's own; -dev and build-essential for the source builds
# (transformer-engine-torch, langdetect); git for pip VCS installs; ninja speeds the build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-dev python3-venv build-essential git ninja-build ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "${VIRTUAL_ENV}" \
    && pip install --upgrade pip "setuptools>=77.0.3,<81" wheel

# 1. vLLM and the exact torch it requires; from here on the constraint keeps that torch
#    (a later install that wanted another torch fails instead of replacing it).
ENV PIP_CONSTRAINT=/etc/pip-constraints.txt
RUN printf 'torch==%s\n' "${TORCH_VERSION}" > /etc/pip-constraints.txt \
    && pip install "vllm==${VLLM_VERSION}" "torch==${TORCH_VERSION}"

# 2. Transformer Engine: the core library wheel for CUDA 12, and the PyTorch extension
#    compiled here against the installed torch (no build isolation: an isolated build would
#    fetch the newest torch and produce an extension for the wrong ABI). cuDNN headers and
#    libraries come from torch's nvidia-cudnn-cu12 wheel, so there is one cuDNN.
RUN pip install pybind11 ninja packaging \
    && CUDNN_PATH="$(python -c 'import nvidia.cudnn; print(list(nvidia.cudnn.__path__)[0])')" \
       NVTE_FRAMEWORK=pytorch NVTE_CUDA_ARCHS="${CUDA_ARCHS}" MAX_JOBS="${MAX_JOBS}" \
       pip install --no-build-isolation \
           "transformer-engine[pytorch,core_cu12]==${TRANSFORMER_ENGINE_VERSION}"

# 3. megatron-core, Ray and this package (its other requirements: transformers 5, datasets,
#    the verifiers' pinned packages). setup.py keeps the installed torch.
WORKDIR /workspace/uniapl_mcore
COPY setup.py pyproject.toml README.md ./
COPY uniapl_mcore ./uniapl_mcore
COPY tools ./tools
COPY examples ./examples
COPY docker ./docker
COPY Dockerfile ./Dockerfile
RUN pip install "megatron-core==${MEGATRON_CORE_VERSION}" "ray==${RAY_VERSION}" \
    && UNIAPL_TORCH_REQUIREMENT="torch==${TORCH_VERSION}" pip install -e . \
    && pip check \
    && python docker/check_pins.py --installed

CMD ["uniapl", "--help"]
