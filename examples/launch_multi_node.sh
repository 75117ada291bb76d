#!/usr/bin/env bash
# Train on several nodes: run this on every node (same config, same MASTER_ADDR, same token).
# Node 0 starts the Ray head and hosts the torchrun rendezvous; the others join both. The
# trainer gets ray_address=MASTER_ADDR:RAY_PORT, so the rollout engines and the
# discriminator use the whole Ray cluster.
#
#   NNODES=16 NODE_RANK=<0..NNODES-1> MASTER_ADDR=<node 0 address> \
#       examples/launch_multi_node.sh CONFIG [uniapl train options / key.sub=value overrides]
#
# Environment:
#   NNODES          nodes in the job                              (required)
#   NODE_RANK       this node's index, 0 on the head node         (required)
#   MASTER_ADDR     address of node 0                             (required)
#   NODE_IP         this node's address for Ray and torchrun      (default: 127.0.0.1 when
#                   MASTER_ADDR is loopback, else detected by Ray and torchrun). A loopback
#                   NODE_IP (several "nodes" on one machine) keeps Ray's servers, the
#                   rendezvous and gloo (GLOO_SOCKET_IFNAME=lo unless set) on loopback.
#   MASTER_PORT     torchrun rendezvous port                      (default: 29500)
#   RAY_PORT        Ray head (GCS) port                           (default: 6379)
#   RAY_TMPDIR      this node's Ray temp dir: sockets, logs       (default: a new
#                   ${TMPDIR:-/tmp}/uniapl-ray.XXXXXX); kept after the run for its logs
#   RAY_NUM_CPUS    CPUs this Ray node offers                     (default: all)
#   RAY_NUM_GPUS    GPUs this Ray node offers                     (default: NPROC_PER_NODE)
#   RAY_START_ARGS  more `ray start` options for this node, split on spaces
#                   (e.g. "--include-dashboard false")            (default: none)
#   NPROC_PER_NODE  trainer processes (GPUs) per node             (default: 8)
#   RDZV_ID         rendezvous id, the same on every node         (default: uniapl)
#   PYTHON          interpreter with uniapl_mcore and ray         (default: python)
#   RAY_WAIT_S      seconds node 0 waits for all Ray nodes        (default: 300)
#   RAY_JOIN_S      seconds a node keeps trying to join the head  (default: 300)
#
# Ray token authentication (RAY_AUTH_MODE=token, the default here; `disabled` turns it off):
# every node needs the cluster's token, the same on all, from RAY_AUTH_TOKEN, or the file
# named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (Ray's own order). Make one with
# `ray get-auth-token --generate` and hand it to every node through your secret store or a
# file only you can read on a shared file system; the script never sends it anywhere and
# stops with one line when it finds none.
#
# When the script exits, it stops this node's Ray: only the processes of RAY_TMPDIR, never
# another Ray on the machine.
set -euo pipefail

die() {
    echo "launch_multi_node.sh: $*" >&2
    exit 2
}

usage() {  # the comment block at the top of this file
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

is_loopback() {
    [[ "$1" == 127.* || "$1" == localhost || "$1" == "::1" ]]
}

need_int() {  # need_int NAME MIN [MAX]: one line naming the variable when it is not
    local value="${!1}"
    [[ "$value" =~ ^[0-9]+$ ]] || die "$1 must be an integer, got '$value'"
    (( value >= $2 )) || die "$1 must be >= $2, got $value"
    [[ $# -lt 3 ]] || (( value <= $3 )) || die "$1 must be <= $3, got $value"
}

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    usage
    exit $(( $# < 1 ? 2 : 0 ))
fi
CONFIG="$1"
shift
[[ -f "$CONFIG" ]] || die "config file not found: $CONFIG"
for var in NNODES NODE_RANK MASTER_ADDR; do
    [[ -n "${!var:-}" ]] || die "set $var (see --help)"
done

MASTER_PORT="${MASTER_PORT:-29500}"
RAY_PORT="${RAY_PORT:-6379}"
NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
RAY_NUM_GPUS="${RAY_NUM_GPUS:-$NPROC_PER_NODE}"
RDZV_ID="${RDZV_ID:-uniapl}"
PYTHON="${PYTHON:-python}"
RAY_WAIT_S="${RAY_WAIT_S:-300}"
RAY_JOIN_S="${RAY_JOIN_S:-300}"
need_int NNODES 1
need_int NODE_RANK 0 $(( NNODES - 1 ))
need_int NPROC_PER_NODE 1
need_int MASTER_PORT 1 65535
need_int RAY_PORT 1 65535
need_int RAY_NUM_GPUS 0
need_int RAY_WAIT_S 1
need_int RAY_JOIN_S 1
[[ -z "${RAY_NUM_CPUS:-}" ]] || need_int RAY_NUM_CPUS 0

for arg in "$@"; do
    if [[ "$arg" == "--dry-run" ]]; then  # arithmetic only: no Ray, no torchrun
        exec "$PYTHON" -m uniapl_mcore.cli train --config "$CONFIG" --nnodes "$NNODES" \
            --nproc-per-node "$NPROC_PER_NODE" "$@"
    fi
done

# ---- addresses: a loopback job stays on loopback
if [[ -z "${NODE_IP:-}" ]] && is_loopback "$MASTER_ADDR"; then
    NODE_IP=127.0.0.1
fi
NODE_IP="${NODE_IP:-}"
# the trainer reads it too: a stage leader's weight channel (transport: direct) listens here
[[ -z "$NODE_IP" ]] || export NODE_IP
if [[ -n "$NODE_IP" ]] && is_loopback "$NODE_IP"; then
    is_loopback "$MASTER_ADDR" || die "NODE_IP=$NODE_IP is loopback but MASTER_ADDR=$MASTER_ADDR" \
        "is not: other nodes could not reach this one"
    if [[ -z "${GLOO_SOCKET_IFNAME:-}" ]]; then
        export GLOO_SOCKET_IFNAME=lo
        echo "launch_multi_node.sh: NODE_IP=$NODE_IP is loopback: GLOO_SOCKET_IFNAME=lo" >&2
    fi
fi

# ---- Ray token authentication: the same token on every node, never sent by this script
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
case "$RAY_AUTH_MODE" in
    token)
        if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
            :
        elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
            [[ -r "$RAY_AUTH_TOKEN_PATH" && -s "$RAY_AUTH_TOKEN_PATH" ]] || \
                die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is not a readable, non-empty file"
        elif [[ ! -s "${HOME:-/nonexistent}/.ray/auth_token" ]]; then
            die "Ray token authentication is on (RAY_AUTH_MODE=token) but no token is" \
                "reachable: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, the same on every node" \
                "(see --help), or RAY_AUTH_MODE=disabled"
        fi
        ;;
    disabled)
        echo "launch_multi_node.sh: RAY_AUTH_MODE=disabled: whoever reaches the Ray ports" \
            "can run code on this cluster" >&2
        ;;
    *) die "RAY_AUTH_MODE must be 'token' or 'disabled', got '$RAY_AUTH_MODE'" ;;
esac

"$PYTHON" -c "import uniapl_mcore.runtime.ray_cluster, ray" 2>/dev/null || \
    die "PYTHON=$PYTHON cannot import uniapl_mcore and ray (install the package or set PYTHONPATH)"

# ---- Ray: head on node 0, the others join it; this node's Ray is stopped on exit
if [[ -z "${RAY_TMPDIR:-}" ]]; then
    RAY_TMPDIR="$(mktemp -d "${TMPDIR:-/tmp}/uniapl-ray.XXXXXX")"
fi
mkdir -p "$RAY_TMPDIR"
RAY_TMPDIR="$(cd "$RAY_TMPDIR" && pwd -P)"
export RAY_TMPDIR
RAY_CLUSTER=("$PYTHON" -m uniapl_mcore.runtime.ray_cluster)
stop_ray() {  # shellcheck disable=SC2317 # called by the EXIT trap
    "${RAY_CLUSTER[@]}" stop "$RAY_TMPDIR" || true
}
trap stop_ray EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

ray_args=(--temp-dir "$RAY_TMPDIR" --num-gpus "$RAY_NUM_GPUS" --disable-usage-stats)
[[ -z "${RAY_NUM_CPUS:-}" ]] || ray_args+=(--num-cpus "$RAY_NUM_CPUS")
[[ -z "$NODE_IP" ]] || ray_args+=(--node-ip-address "$NODE_IP")
read -r -a extra <<< "${RAY_START_ARGS:-}"
ray_args+=("${extra[@]}")
head_address="${MASTER_ADDR}:${RAY_PORT}"
echo "launch_multi_node.sh: node $NODE_RANK of $NNODES, Ray temp dir $RAY_TMPDIR" >&2

if [[ "$NODE_RANK" == "0" ]]; then
    "${RAY_CLUSTER[@]}" start --head --port "$RAY_PORT" "${ray_args[@]}" || \
        die "could not start the Ray head on port $RAY_PORT (logs: $RAY_TMPDIR)"
else
    deadline=$(( SECONDS + RAY_JOIN_S ))
    join_log="$RAY_TMPDIR/join.log"
    until "${RAY_CLUSTER[@]}" start --address "$head_address" "${ray_args[@]}" \
            >"$join_log" 2>&1; do
        status=$?
        if [[ "$status" == 3 ]]; then  # ray_cluster.EXIT_AUTH
            die "the Ray head at $head_address refused this node's token: RAY_AUTH_TOKEN /" \
                "RAY_AUTH_TOKEN_PATH must give the same token on every node"
        fi
        if (( SECONDS >= deadline )); then
            die "could not join the Ray head at $head_address within ${RAY_JOIN_S} s" \
                "(last attempt: $join_log)"
        fi
        sleep 5  # the head may still be starting
    done
fi

if [[ "$NODE_RANK" == "0" ]]; then  # engines are placed at start-up: wait for every node
    "${RAY_CLUSTER[@]}" wait-nodes "$head_address" "$NNODES" "$RAY_WAIT_S" || \
        die "not every Ray node joined $head_address"
fi

# ---- torchrun: one trainer process per GPU on every node; node 0 hosts the rendezvous
is_host=false
[[ "$NODE_RANK" != "0" ]] || is_host=true
torchrun_args=(--nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE"
               --rdzv-backend c10d --rdzv-endpoint "${MASTER_ADDR}:${MASTER_PORT}"
               --rdzv-id "$RDZV_ID" --rdzv-conf "is_host=$is_host")
[[ -z "$NODE_IP" ]] || torchrun_args+=(--local-addr "$NODE_IP")
"$PYTHON" -m torch.distributed.run "${torchrun_args[@]}" \
    -m uniapl_mcore.cli train --config "$CONFIG" "$@" "ray_address=$head_address" &
trainer=$!
trap 'kill -TERM "$trainer" 2>/dev/null || true' TERM INT
status=0
wait "$trainer" || status=$?
while kill -0 "$trainer" 2>/dev/null; do  # a signal interrupted the wait: let it finish
    wait "$trainer" || status=$?
done
exit "$status"
