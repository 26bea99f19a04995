#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian's slurm-wlm and munge: munged, slurmctld, slurmd, with a
# generated slurm.conf for this host's cores and memory), then .ci/slurm.yml through `distinv run --slurm --wait`
# (submitit jobs) and through `distinv run --srun` inside `salloc`; every run must finish ok. The daemons this
# script started are stopped on exit, whatever happened. Needs root (or sudo) to install the packages.
#
#   bash .ci/slurm_check.sh        # from the repository root, after `make setup`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DISTINV=${DISTINV:-.venv/bin/distinv}
[ "$(id -u)" = 0 ] && SUDO= || SUDO=sudo

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurm-wlm munge >/dev/null
fi

WORK=$(mktemp -d /tmp/distinv-slurm.XXXXXX)
chmod 755 "$WORK"
STARTED=()
stop() {
  for pidfile in "${STARTED[@]}"; do
    [ -f "$pidfile" ] && $SUDO kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  sleep 1
}
trap stop EXIT

# munge: the key Debian's package made (or a new one), a daemon of our own unless one already runs
if ! munge -n >/dev/null 2>&1; then  # no munged answering yet
  [ -f /etc/munge/munge.key ] || $SUDO mungekey --create
  $SUDO mkdir -p /run/munge && $SUDO chown munge:munge /run/munge
  MUNGE_PID=/run/munge/distinv-ci.pid  # written by munged, which runs as the munge user
  $SUDO runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
  STARTED+=("$MUNGE_PID")
fi
for _ in $(seq 20); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.5; done
munge -n | unmunge >/dev/null

HOST=$(hostname -s)
CPUS=$(nproc)
MEMORY=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
mkdir -p "$WORK/state" "$WORK/spool"
export SLURM_CONF="$WORK/slurm.conf"
cat > "$SLURM_CONF" <<CONF
ClusterName=distinv-ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=$(( 20000 + RANDOM % 20000 ))
SlurmdPort=$(( 40000 + RANDOM % 20000 ))
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName=$HOST CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=ci Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
$SUDO /usr/sbin/slurmctld -f "$SLURM_CONF"
STARTED+=("$WORK/slurmctld.pid")
$SUDO /usr/sbin/slurmd -f "$SLURM_CONF"
STARTED+=("$WORK/slurmd.pid")
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -qx idle && break
  sleep 1
done
sinfo -h -o "%P %D %T %c" || { cat "$WORK"/slurm*.log; exit 1; }
sinfo -h -o %T | grep -qx idle || { echo "slurm_check: the node never became idle"; cat "$WORK"/slurm*.log; exit 1; }

check_all_ok() {  # every run of the config has finished rows in the folder
  "$PY" - "$1" <<'PYTHON'
import sys
from pathlib import Path

from distinv.bench.config import load_config
from distinv.bench.results import finished_runs, read_rows

folder = Path(sys.argv[1])
runs = load_config(".ci/slurm.yml", overrides={"output": str(folder)}).runs()
done = finished_runs(folder)
missing = [r.key for r in runs if r.key not in done]
failed = sorted({row["run_key"] for row in read_rows(folder) if row.get("status") != "ok"})
print(f"slurm_check: {folder.name}: {len(runs) - len(missing)}/{len(runs)} runs finished ok", flush=True)
sys.exit(1 if missing or failed else 0)
PYTHON
}

echo "slurm_check: distinv run --slurm --wait"
time "$DISTINV" run .ci/slurm.yml --slurm --wait -o "$WORK/submitit"
check_all_ok "$WORK/submitit"

echo "slurm_check: distinv run --srun inside salloc"
time salloc --nodes=1 --ntasks=2 --cpus-per-task=1 "$DISTINV" run .ci/slurm.yml --srun -o "$WORK/srun"
check_all_ok "$WORK/srun"
echo "slurm_check: passed"
