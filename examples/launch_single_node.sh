#!/usr/bin/env bash
# Train on one node: one torchrun process per GPU; extra arguments go to `uniapl train`.
#
#   examples/launch_single_node.sh CONFIG [uniapl train options / key.sub=value overrides]
#   examples/launch_single_node.sh examples/qwen3_0p6b_8gpu.yaml --run-dir runs/0p6b
#   examples/launch_single_node.sh examples/qwen3_4b_8gpu.yaml --dry-run
#
# Environment overrides:
#   NPROC_PER_NODE  processes (GPUs) on this node          (default: 8)
#   PYTHON          interpreter with uniapl_mcore installed (default: python)
#   RAY_ADDRESS     join this Ray cluster (passed as ray_address=...; default: a local one)
set -euo pipefail

usage() {  # the comment block at the top of this file
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    usage
    exit $(( $# < 1 ? 2 : 0 ))
fi

CONFIG="$1"
shift
if [[ ! -f "$CONFIG" ]]; then
    echo "launch_single_node.sh: config file not found: $CONFIG" >&2
    exit 2
fi

NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
PYTHON="${PYTHON:-python}"
EXTRA=()
if [[ -n "${RAY_ADDRESS:-}" ]]; then
    EXTRA+=("ray_address=${RAY_ADDRESS}")
fi
for arg in "$@"; do
    if [[ "$arg" == "--dry-run" ]]; then  # a dry run needs no processes: plain call
        exec "$PYTHON" -m uniapl_mcore.cli train --config "$CONFIG" \
            --nproc-per-node "$NPROC_PER_NODE" "$@" ${EXTRA[@]+"${EXTRA[@]}"}
    fi
done

exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC_PER_NODE" \
    -m uniapl_mcore.cli train --config "$CONFIG" "$@" ${EXTRA[@]+"${EXTRA[@]}"}
