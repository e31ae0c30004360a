#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the Slurm executor's tests (real daemons,
# nothing mocked): `slurm-local.sh start DIR CTLD_PORT SLURMD_PORT` writes DIR/slurm.conf,
# starts munged (if none runs), slurmctld and slurmd, and waits until the node is idle;
# `slurm-local.sh stop DIR` stops the two Slurm daemons. Clients use SLURM_CONF=DIR/slurm.conf.
# Needs root and Debian's slurm-wlm and munge (scripts/setup.sh installs them).
set -euo pipefail
cmd=${1:?usage: slurm-local.sh start DIR CTLD_PORT SLURMD_PORT | stop DIR}
dir=${2:?DIR}

if [ "$cmd" = stop ]; then
  for d in slurmd slurmctld; do
    if [ -f "$dir/$d.pid" ]; then kill "$(cat "$dir/$d.pid")" 2>/dev/null || true; fi
  done
  exit 0
fi

ctld_port=${3:?CTLD_PORT}
slurmd_port=${4:?SLURMD_PORT}
for bin in slurmctld slurmd sbatch munged; do
  command -v "$bin" >/dev/null || { echo "slurm-local: $bin is not installed (scripts/setup.sh installs slurm-wlm and munge)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "slurm-local: needs root (the test cluster runs its daemons as root)" >&2; exit 1; }

if ! munge -n >/dev/null 2>&1; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || create-munge-key >/dev/null; }
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
fi

mkdir -p "$dir/state" "$dir/spool" "$dir/log"
mem_mib=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
cat > "$dir/slurm.conf" <<EOF
ClusterName=acpotest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem_mib State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then exit 0; fi
  sleep 0.1
done
echo "slurm-local: the node did not become idle; logs in $dir/log" >&2
exit 1
