#!/bin/bash
# A real single-node Slurm on localhost, for the tests and for trying the job scripts:
#   bash jobs/local-slurm.sh start     # install (Debian's slurm-wlm, munge) and start; idempotent
#   bash jobs/local-slurm.sh status    # exit 0 when a job can be submitted
#   bash jobs/local-slurm.sh stop      # stop the daemons, munged too (the state directory stays)
# Then: export SLURM_CONF=${MPISGD_SLURM_DIR:-/tmp/mpisgd-slurm}/slurm.conf   (printed by start)
#
# The node advertises max(4, nproc) CPUs (SlurmdParameters=config_overrides), so a 4-rank job
# fits a 2-core machine; tasks are not bound to cores (task/none) and the cluster has one
# partition, `debug`, without limits. Needs root (apt-get, munged, slurmd). Everything it writes
# is under MPISGD_SLURM_DIR, except /etc/slurm/slurm.conf, linked there when no other exists.
set -euo pipefail
DIR=${MPISGD_SLURM_DIR:-/tmp/mpisgd-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
}

configure() {
    mkdir -p "$DIR/spool" "$DIR/state" "$DIR/log"
    local cpus mem
    cpus=$(nproc); [ "$cpus" -lt 4 ] && cpus=4
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    cat > "$CONF.new" <<EOF
# written by jobs/local-slurm.sh: one node, localhost
ClusterName=mpisgd-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
MaxArraySize=10001
KillWait=5
# A requeued job waits cred_expire + 1 s before it starts again (slurmd refuses a job whose
# earlier run's credential it still holds revoked: "Job credential revoked"); 120 s by
# default, 15 s here, still ample for a step to launch on this one node.
AuthInfo=cred_expire=15
InactiveLimit=0
MinJobAge=300
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    if ! cmp -s "$CONF.new" "$CONF"; then mv "$CONF.new" "$CONF"; else rm "$CONF.new"; fi
    if [ ! -e /etc/slurm/slurm.conf ]; then mkdir -p /etc/slurm && ln -s "$CONF" /etc/slurm/slurm.conf; fi
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    if munge -n </dev/null >/dev/null 2>&1; then return; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
                                     chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return; sleep 0.1; done
    echo "local-slurm: munged did not start" >&2; exit 1
}

ready() { sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

start() {
    install
    configure
    start_munge
    running "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
    running "$DIR/slurmd.pid" || slurmd -f "$CONF"
    for _ in $(seq 300); do
        if ready; then echo "export SLURM_CONF=$CONF"; return; fi
        sleep 0.2
    done
    echo "local-slurm: the node did not come up; see $DIR/log/" >&2
    tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
}

stop() {
    for pid in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
        if running "$pid"; then kill "$(cat "$pid")"; fi
    done
    for pid in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
        for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
    done
    if running /run/munge/munged.pid; then kill "$(cat /run/munge/munged.pid)"; fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) ready ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
