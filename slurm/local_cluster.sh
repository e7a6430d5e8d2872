#!/bin/bash
# A Slurm cluster of one or more nodes on this machine, for testing the sbatch templates (Debian slurm-wlm packages).
#
#   slurm/local_cluster.sh install                      apt-get the daemons and clients if missing (needs root)
#   slurm/local_cluster.sh start STATE_DIR [--nodes N]  write STATE_DIR/slurm.conf, start slurmctld + N slurmd,
#                                                       wait until every node is idle (N defaults to 1)
#   slurm/local_cluster.sh stop STATE_DIR               stop what `start` started from STATE_DIR: jobs, daemons (by
#                                                       their PID files) and, for N > 1, the network namespaces
#
# One node is this machine itself. With N > 1 each node is a host of its own as far as the network goes: a network
# namespace (own address on a bridge, own loopback), a UTS namespace (own hostname, = its node name) and its own
# /etc/hosts (bind-mounted) that resolves every node name, as a cluster's DNS would; the filesystem stays shared, as
# a cluster's shared filesystem is. slurmctld stays on this machine, at the bridge's address. Needs root and `ip`.
# SLURM_LOCAL_PORT (default 6817) picks the controller's port and, for N > 1, the names and the 10.x.y.0/24 subnet
# of the namespaces and bridge, so clusters started with different ports do not collide.
#
# Clients must see the same config: export SLURM_CONF=STATE_DIR/slurm.conf. Authentication is auth/none
# (no munged), which is only acceptable on a single test machine. All state stays under STATE_DIR.
set -euo pipefail
CMD=${1:?usage: local_cluster.sh install|start STATE_DIR [--nodes N]|stop STATE_DIR}

write_conf() {  # $1 state dir, $2 controller host spec, then the node and partition lines on stdin
  local D=$1
  { cat <<CONF
ClusterName=sambaytest
SlurmctldHost=$2
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
# Scan the queue every 2 s (default 60 s) so test jobs and requeues start promptly.
SchedulerParameters=sched_interval=2
ReturnToService=2
KillWait=30
MinJobAge=3600
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd-%n.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd-%n.log
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
CONF
    cat; } > "$D/slurm.conf"
}

net_names() {  # the bridge and namespace names and the subnet for this port (interface names: <= 15 characters)
  TAG=sb$PORT
  BRIDGE=${TAG}br
  NET=10.$(( (PORT >> 8) & 255 )).$(( PORT & 255 ))
}

net_up() {  # $1 state dir, $2 nodes: a bridge at $NET.254 and one namespace per node at $NET.(i+1)
  local D=$1 N=$2 i
  # Each one is recorded as soon as it exists, so `stop` removes whatever a failed start left behind (and
  # nothing of the same name that this start did not make).
  : > "$D/namespaces"
  ip link add "$BRIDGE" type bridge
  echo "$BRIDGE" > "$D/bridge"
  ip addr add "$NET.254/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  printf '127.0.0.1 localhost\n%s %s\n' "$NET.254" "$H" > "$D/hosts"
  for i in $(seq 0 $((N - 1))); do
    ip netns add "${TAG}n$i"
    echo "${TAG}n$i" >> "$D/namespaces"
    ip link add "${TAG}v$i" type veth peer name eth0 netns "${TAG}n$i"
    ip link set "${TAG}v$i" master "$BRIDGE" up
    ip -n "${TAG}n$i" addr add "$NET.$((i + 1))/24" dev eth0
    ip -n "${TAG}n$i" link set eth0 up
    ip -n "${TAG}n$i" link set lo up
    echo "$NET.$((i + 1)) node$i" >> "$D/hosts"
  done
}

start_nodes() {  # $1 state dir, $2 nodes
  local D=$1 N=$2 i
  if [ "$N" = 1 ]; then slurmd; return; fi
  for i in $(seq 0 $((N - 1))); do
    # The mount and UTS namespaces make node$i's /etc/hosts and hostname its own; slurmd's jobs inherit both.
    # nsenter, not `ip netns exec`: that one mounts a fresh /sys without the cgroup tree slurmd needs.
    nsenter --net="/run/netns/${TAG}n$i" unshare --mount --uts sh -c \
      'mount --bind "$1" /etc/hosts && hostname "$2" && exec slurmd -N "$2"' sh "$D/hosts" "node$i"
  done
}

start() {  # $1 state dir, $2 nodes
  local D=$1 N=$2 CPN MPN
  [[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "local_cluster.sh: --nodes must be a positive integer, got '$N'" >&2; exit 2; }
  H=$(hostname -s)
  PORT=${SLURM_LOCAL_PORT:-6817}
  # The machine's CPUs and memory are split between the nodes, so N nodes do not oversubscribe it.
  CPN=$(( $(nproc) / N )); [ "$CPN" -ge 1 ] || CPN=1
  MPN=$(( ($(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024) / N ))
  mkdir -p "$D/state" "$D/spool"
  if [ "$N" = 1 ]; then
    write_conf "$D" "$H" <<CONF
NodeName=$H CPUs=$CPN RealMemory=$MPN State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  else
    [ "$(id -u)" = 0 ] || { echo "local_cluster.sh: --nodes $N needs root (network namespaces)" >&2; exit 1; }
    command -v ip >/dev/null || { echo "local_cluster.sh: --nodes $N needs iproute2's ip" >&2; exit 1; }
    net_names
    net_up "$D" "$N"
    { for i in $(seq 0 $((N - 1))); do
        echo "NodeName=node$i NodeAddr=$NET.$((i + 1)) CPUs=$CPN RealMemory=$MPN State=UNKNOWN"; done
      echo "PartitionName=debug Nodes=node[0-$((N - 1))] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
    } | write_conf "$D" "$H($NET.254)"
  fi
  export SLURM_CONF=$D/slurm.conf
  slurmctld
  start_nodes "$D" "$N"
  for _ in $(seq 1 120); do
    if [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cx idle)" = "$N" ]; then sinfo -N; exit 0; fi
    sleep 0.5
  done
  echo "local_cluster.sh: $N node(s) not idle after 60 s; see $D/slurmctld.log and $D/slurmd-*.log" >&2
  exit 1
}

stop_pid() {  # $1 PID file: TERM, up to 10 s, then KILL
  local PID
  [ -f "$1" ] || return 0
  PID=$(cat "$1")
  kill "$PID" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$PID" 2>/dev/null || true
  rm -f "$1"
}

stop() {  # $1 state dir
  local D=$1 JOBS f NS
  export SLURM_CONF=$D/slurm.conf
  # Cancel every job first, so no batch script or job step outlives the daemons.
  if [ -f "$D/slurmctld.pid" ] && kill -0 "$(cat "$D/slurmctld.pid")" 2>/dev/null; then
    JOBS=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$JOBS" ]; then
      # shellcheck disable=SC2086
      scancel $JOBS || true
      for _ in $(seq 1 120); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  for f in "$D"/slurmd-*.pid "$D/slurmctld.pid"; do stop_pid "$f"; done
  if [ -f "$D/namespaces" ]; then
    while read -r NS; do
      # Whatever still runs in a node (a step that outlived its slurmd) goes with the node.
      ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$NS" 2>/dev/null || true   # its veth goes with it
    done < "$D/namespaces"
    rm -f "$D/namespaces"
  fi
  if [ -f "$D/bridge" ]; then ip link del "$(cat "$D/bridge")" 2>/dev/null || true; rm -f "$D/bridge"; fi
}

case "$CMD" in
install)
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null; then exit 0; fi
  [ "$(id -u)" = 0 ] || { echo "local_cluster.sh: installing Slurm needs root" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
  ;;
start)
  D=$(realpath -m "${2:?usage: local_cluster.sh start STATE_DIR [--nodes N]}")
  case "${3:-}" in
    "") NODES=1 ;;
    --nodes) NODES=${4:?usage: local_cluster.sh start STATE_DIR --nodes N} ;;
    --nodes=*) NODES=${3#--nodes=} ;;
    *) echo "local_cluster.sh: unknown option $3 (expected --nodes N)" >&2; exit 2 ;;
  esac
  start "$D" "$NODES"
  ;;
stop)
  stop "$(realpath -m "${2:?usage: local_cluster.sh stop STATE_DIR}")"
  ;;
*)
  echo "local_cluster.sh: unknown command $CMD (install|start|stop)" >&2; exit 2 ;;
esac
