#!/bin/bash
# A one-node Slurm cluster on this machine, for testing the sbatch templates (Debian slurm-wlm packages).
#
#   slurm/local_cluster.sh install          apt-get the daemons and clients if missing (needs root)
#   slurm/local_cluster.sh start STATE_DIR  write STATE_DIR/slurm.conf, start slurmctld + slurmd, wait for idle
#   slurm/local_cluster.sh stop STATE_DIR   stop the daemons started from STATE_DIR, by their PID files
#
# Clients must see the same config: export SLURM_CONF=STATE_DIR/slurm.conf. Authentication is auth/none
# (no munged), which is only acceptable on a single test machine. All state stays under STATE_DIR.
set -euo pipefail
CMD=${1:?usage: local_cluster.sh install|start STATE_DIR|stop STATE_DIR}

case "$CMD" in
install)
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null; then exit 0; fi
  [ "$(id -u)" = 0 ] || { echo "local_cluster.sh: installing Slurm needs root" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
  ;;
start)
  D=$(realpath -m "${2:?usage: local_cluster.sh start STATE_DIR}")
  H=$(hostname -s)
  PORT=${SLURM_LOCAL_PORT:-6817}
  MEM=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024 ))
  mkdir -p "$D/state" "$D/spool"
  cat > "$D/slurm.conf" <<CONF
ClusterName=sambaytest
SlurmctldHost=$H
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
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$H CPUs=$(nproc) RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  export SLURM_CONF=$D/slurm.conf
  slurmctld
  slurmd
  for _ in $(seq 1 120); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then sinfo; exit 0; fi
    sleep 0.5
  done
  echo "local_cluster.sh: node not idle after 60 s; see $D/slurmctld.log and $D/slurmd.log" >&2
  exit 1
  ;;
stop)
  D=$(realpath -m "${2:?usage: local_cluster.sh stop STATE_DIR}")
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
  for f in "$D/slurmd.pid" "$D/slurmctld.pid"; do
    if [ -f "$f" ]; then
      PID=$(cat "$f")
      kill "$PID" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$PID" 2>/dev/null || true
      rm -f "$f"
    fi
  done
  ;;
*)
  echo "local_cluster.sh: unknown command $CMD (install|start|stop)" >&2; exit 2 ;;
esac
