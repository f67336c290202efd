#!/usr/bin/env bash
# A throwaway one-node Slurm cluster in a folder, to try `srun softprompt ...` on one machine (and what the tests use
# to check the srun path, tests/SoftPrompt.Tests/Distributed/SlurmTests.cs):
#   scripts/mpi/local_slurm.sh start DIR     start munged, slurmctld and slurmd with DIR/slurm.conf (free ports, this
#                                            host as the one node with all its CPUs); then: export SLURM_CONF=DIR/slurm.conf
#                                            srun -n 2 --mpi=pmi2 softprompt train ...    (MPICH)
#                                            srun -n 2 --mpi=pmix softprompt train ...    (Open MPI)
#   scripts/mpi/local_slurm.sh stop DIR      stop them (DIR stays, with its logs in DIR/log)
# Needs root (slurmd starts the tasks) and Debian/Ubuntu's slurmd slurmctld slurm-client munge packages. Nothing outside
# DIR is touched: its own munge key and socket, state and spool folders, pid and log files.
set -euo pipefail
usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1; dir=$2

stop() {
  for p in slurmd slurmctld munged; do
    if [ -f "$dir/run/$p.pid" ]; then kill "$(cat "$dir/run/$p.pid")" 2>/dev/null || true; fi
  done
  # Wait (bounded) for them to go, so that a new cluster can take the ports at once.
  for _ in $(seq 1 50); do
    alive=0
    for p in slurmd slurmctld munged; do
      [ -f "$dir/run/$p.pid" ] && kill -0 "$(cat "$dir/run/$p.pid")" 2>/dev/null && alive=1
    done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  rm -f "$dir"/run/*.pid
}

case $cmd in
start)
  [ "$(id -u)" -eq 0 ] || { echo "local_slurm: needs root (slurmd starts the job's tasks)" >&2; exit 2; }
  for b in munged slurmctld slurmd srun sinfo; do
    command -v $b > /dev/null || { echo "local_slurm: $b not found (apt-get install slurmd slurmctld slurm-client munge)" >&2; exit 2; }
  done
  mkdir -p "$dir"/{state,spool,log,run}
  dir=$(cd "$dir" && pwd)
  host=$(hostname -s)
  read -r p1 p2 < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
  [ -f "$dir/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge.key"; chmod 600 "$dir/munge.key"; }
  munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" --log-file="$dir/log/munged.log" \
    --pid-file="$dir/run/munged.pid" --seed-file="$dir/munge.seed"
  cat > "$dir/slurm.conf" <<EOF
ClusterName=softprompt
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=$p1
SlurmdPort=$p2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N "$host"
  for _ in $(seq 1 100); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "local_slurm: up; export SLURM_CONF=$SLURM_CONF" >&2
      exit 0
    fi
    sleep 0.2
  done
  echo "local_slurm: the node did not come up within 20 s; logs in $dir/log:" >&2
  tail -n 5 "$dir"/log/*.log >&2 || true
  stop
  exit 1
  ;;
stop) stop ;;
*) usage ;;
esac
