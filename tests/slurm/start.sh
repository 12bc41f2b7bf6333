#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for `pytest -m slurm` (tests/slurm/test_slurm.py):
# munged, slurmctld and slurmd started by hand (no systemd, no cgroups) with a slurm.conf made
# here, all under $CFGLAB_SLURM_DIR (default /tmp/cfglab-slurm). Idempotent: a cluster already
# answering is left as it is. Needs root (slurmd) and Debian's slurm-wlm and munge:
#   apt-get install -y slurm-wlm munge && bash tests/slurm/start.sh && pytest -q -m slurm
# The clients find the cluster through SLURM_CONF=$CFGLAB_SLURM_DIR/slurm.conf (the test sets
# it). Stop it with: bash tests/slurm/start.sh stop
set -euo pipefail
DIR="${CFGLAB_SLURM_DIR:-/tmp/cfglab-slurm}"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

stop() {
    for pid in "$DIR"/slurmd.pid "$DIR"/slurmctld.pid "$DIR"/munged.pid; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
}
if [ "${1:-}" = "stop" ]; then stop; exit 0; fi

for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || { echo "start.sh: no $tool: apt-get install -y slurm-wlm munge" >&2; exit 1; }
done
if [ "$(id -u)" != 0 ]; then echo "start.sh: slurmd needs root" >&2; exit 1; fi
if [ -f "$CONF" ] && timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "start.sh: the cluster in $DIR is up"; exit 0
fi
stop
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))"

# munge: a key and a socket of this cluster's own
[ -f "$DIR/munge.key" ] || dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge.key"
munged --force --socket="$DIR/munge.socket" --key-file="$DIR/munge.key" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munged.seed"

cat > "$CONF" <<CONF
ClusterName=cfglab
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${CFGLAB_SLURM_PORT:-6817}
SlurmdPort=$(( ${CFGLAB_SLURM_PORT:-6817} + 1 ))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -f "$CONF" -c
slurmd -f "$CONF" -N "$NODE"
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "start.sh: one-node cluster up ($NODE, $CPUS CPUs); export SLURM_CONF=$CONF"
        exit 0
    fi
    sleep 0.5
done
echo "start.sh: the node never came up; see $DIR/log/" >&2
sinfo -N -l >&2 || true
tail -n 20 "$DIR"/log/*.log >&2 || true
exit 1
