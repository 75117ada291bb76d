#!/usr/bin/env bash
# Train on several nodes: run this on every node (same config, same MASTER_ADDR).
# Node 0 starts the Ray head and the torchrun rendezvous; the others join both. The run
# gets ray_address=auto, so the rollout engines and the discriminator use the whole cluster.
#
#   NNODES=16 NODE_RANK=<0..NNODES-1> MASTER_ADDR=<node 0 address> \
#       examples/launch_multi_node.sh CONFIG [uniapl train options / key.sub=value overrides]
#
# Environment:
#   NNODES          nodes in the job                          (required)
#   NODE_RANK       this node's index, 0 on the head node     (required)
#   MASTER_ADDR     address of node 0                         (required)
#   MASTER_PORT     torchrun rendezvous port                  (default: 29500)
#   RAY_PORT        Ray head (GCS) port                       (default: 6379)
#   NPROC_PER_NODE  trainer processes (GPUs) per node         (default: 8)
#   RDZV_ID         rendezvous id, the same on every node     (default: uniapl)
#   PYTHON / RAY    interpreter / ray CLI                     (default: python / ray)
#   RAY_WAIT_S      seconds node 0 waits for all Ray nodes    (default: 300)
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
    echo "launch_multi_node.sh: config file not found: $CONFIG" >&2
    exit 2
fi
for var in NNODES NODE_RANK MASTER_ADDR; do
    if [[ -z "${!var:-}" ]]; then
        echo "launch_multi_node.sh: set $var (see --help)" >&2
        exit 2
    fi
done

MASTER_PORT="${MASTER_PORT:-29500}"
RAY_PORT="${RAY_PORT:-6379}"
NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
RDZV_ID="${RDZV_ID:-uniapl}"
PYTHON="${PYTHON:-python}"
RAY="${RAY:-ray}"
RAY_WAIT_S="${RAY_WAIT_S:-300}"

for arg in "$@"; do
    if [[ "$arg" == "--dry-run" ]]; then  # arithmetic only: no Ray, no torchrun
        exec "$PYTHON" -m uniapl_mcore.cli train --config "$CONFIG" --nnodes "$NNODES" \
            --nproc-per-node "$NPROC_PER_NODE" "$@"
    fi
done

# ---- Ray: head on node 0, workers join it; stopped again when this script exits
if [[ "$NODE_RANK" == "0" ]]; then
    "$RAY" start --head --port "$RAY_PORT" --num-gpus "$NPROC_PER_NODE" --disable-usage-stats
else
    joined=0
    for _ in $(seq 1 60); do  # the head may still be starting
        if "$RAY" start --address "${MASTER_ADDR}:${RAY_PORT}" --num-gpus "$NPROC_PER_NODE" \
                --disable-usage-stats; then
            joined=1
            break
        fi
        sleep 5
    done
    if [[ "$joined" != 1 ]]; then
        echo "launch_multi_node.sh: could not join the Ray head at ${MASTER_ADDR}:${RAY_PORT}" >&2
        exit 1
    fi
fi
trap '"$RAY" stop --force >/dev/null 2>&1 || true' EXIT

if [[ "$NODE_RANK" == "0" ]]; then  # engines are placed at start-up: wait for every node
    "$PYTHON" - "$NNODES" "$RAY_WAIT_S" <<'PY'
import sys
import time

import ray

want, deadline = int(sys.argv[1]), time.time() + float(sys.argv[2])
ray.init(address="auto", log_to_driver=False)
while len([n for n in ray.nodes() if n["Alive"]]) < want:
    if time.time() > deadline:
        sys.exit(f"launch_multi_node.sh: only {len(ray.nodes())} of {want} Ray nodes joined")
    time.sleep(2)
ray.shutdown()
PY
fi

# ---- torchrun: one trainer process per GPU on every node
"$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK" \
    --nproc-per-node "$NPROC_PER_NODE" --rdzv-backend c10d \
    --rdzv-endpoint "${MASTER_ADDR}:${MASTER_PORT}" --rdzv-id "$RDZV_ID" \
    -m uniapl_mcore.cli train --config "$CONFIG" "$@" ray_address=auto
