#!/usr/bin/env bash
# Start a single-node Slurm cluster with accounting and fake GPUs on this machine, as root,
# without systemd: munged, mariadbd, slurmdbd, slurmctld and slurmd are started directly and
# their PIDs kept under $KAPPADIFF_SLURM_STATE for down.sh. Exits non-zero, with the daemons'
# logs, when the cluster cannot run a GPU job; exits 0 at once when it is already up with the
# same configuration. Usage: ci/slurm/up.sh   (see ci/slurm/env.sh for the settings)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$here/env.sh"

[ "$(id -u)" -eq 0 ] || { echo "up.sh: must run as root (it starts system daemons)" >&2; exit 1; }
"$here/install.sh"

fail() {
    echo "up.sh: $*" >&2
    for f in "$LOGS"/*.log "$LOGS"/munge/*.log "$STATE"/mariadb/*.log; do
        [ -f "$f" ] && { echo "---- $f" >&2; tail -n 30 "$f" >&2; }
    done
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local end=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || fail "$what not ready after ${limit} s"
        sleep 0.5
    done
}

host=$(hostname -s)
# The node as slurmd sees it (CPUs, sockets, cores, threads, RealMemory), first line only.
node_hw=$(slurmd -C | head -n 1)
gpus=$KAPPADIFF_SLURM_GPUS
last_gpu=$((gpus - 1))

new=$(mktemp -d)
trap 'rm -rf "$new"' EXIT

cat >"$new/slurm.conf" <<EOF
$MARKER
ClusterName=kappadiff
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# No cgroups (no systemd, containers): processes tracked through /proc, tasks not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
# Finished jobs stay visible to squeue for 10 min, far above Snakemake's status-check
# interval, so either status command of the executor plugin sees every job end.
MinJobAge=600
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
# Keep the executor's job comment (rule_<rule>_wildcards_<values>) in sacct.
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
GresTypes=gpu
$node_hw NodeAddr=127.0.0.1 Gres=gpu:$gpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$new/gres.conf" <<EOF
$MARKER
# Fake GPUs: character devices made by up.sh; Slurm only needs them to exist.
NodeName=$host Name=gpu File=/dev/kappadiff_gpu[0-$last_gpu]
EOF

cat >"$new/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
# MariaDB's root authenticates by unix socket as the OS user root: no password is stored.
StorageUser=root
EOF

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
all_alive() {
    alive /run/munge/munged.pid && alive "$STATE/mariadb/mariadb.pid" && alive "$STATE/slurmdbd.pid" &&
        alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid"
}
same_config() {
    for f in slurm.conf gres.conf slurmdbd.conf; do
        cmp -s "$new/$f" "$SLURM_ETC/$f" || return 1
    done
}

if all_alive && same_config && scontrol ping >/dev/null 2>&1; then
    echo "slurm cluster already up (state in $STATE)"
    exit 0
fi

for f in slurm.conf gres.conf slurmdbd.conf; do
    if [ -f "$SLURM_ETC/$f" ] && ! grep -qF "$MARKER" "$SLURM_ETC/$f"; then
        fail "$SLURM_ETC/$f exists and was not written by up.sh; refusing to replace it"
    fi
done

# Restart from scratch: a changed node or gres line only takes effect in fresh daemons.
"$here/down.sh" >/dev/null

mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$STATE/mariadb" "$LOGS/munge" "$SLURM_ETC" \
    /run/munge /run/mysqld
# munged and mariadbd run as their own users and write their PID files and logs themselves.
chown munge:munge "$LOGS/munge" /run/munge
chown mysql:mysql "$STATE/mariadb" /run/mysqld
install -m 644 "$new/slurm.conf" "$new/gres.conf" "$SLURM_ETC/"
install -m 600 "$new/slurmdbd.conf" "$SLURM_ETC/"
for i in $(seq 0 "$last_gpu"); do
    dev=/dev/kappadiff_gpu$i
    # Same major/minor as /dev/null: reading or writing one does nothing.
    [ -c "$dev" ] || mknod -m 666 "$dev" c 1 3
done

echo "starting munged"
[ -f /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
runuser -u munge -- munged --log-file="$LOGS/munge/munged.log" || fail "munged did not start"
wait_for 20 munged munge -n

echo "starting mariadbd"
if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$STATE/mysql" --skip-test-db \
        --auth-root-authentication-method=socket >"$LOGS/mariadb-install.log" 2>&1 ||
        fail "mariadb-install-db failed"
fi
# The default socket path (/run/mysqld/mysqld.sock) is where slurmdbd's client library looks.
# --no-defaults: none of /etc/mysql's settings, only these.
mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" --pid-file="$STATE/mariadb/mariadb.pid" \
    --socket=/run/mysqld/mysqld.sock --skip-networking --log-error="$STATE/mariadb/mariadb.log" \
    --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
wait_for 60 mariadbd mariadb --socket=/run/mysqld/mysqld.sock -e "select 1"
wait_for 10 "mariadbd PID file" test -s "$STATE/mariadb/mariadb.pid"

echo "starting slurmdbd"
slurmdbd || fail "slurmdbd did not start"
wait_for 60 slurmdbd sacctmgr -n show cluster

echo "starting slurmctld and slurmd"
slurmctld || fail "slurmctld did not start"
wait_for 30 slurmctld scontrol ping
slurmd || fail "slurmd did not start"
node_idle() { sinfo -h -n "$host" -o %T | grep -qx idle; }
wait_for 60 "node $host (idle)" node_idle
wait_for 30 "cluster registration in slurmdbd" sh -c "sacctmgr -n -P show cluster format=cluster | grep -qx kappadiff"

# Smoke test: a GPU job runs, sees its GPU, and is found by sacct (the executor's status query).
smoke=$STATE/smoke.out
rm -f "$smoke"
# shellcheck disable=SC2016  # $CUDA_VISIBLE_DEVICES is the job's, expanded in the job
jobid=$(timeout 60 sbatch --parsable --wait --gpus=1 --mem=100 -t 1 -o "$smoke" \
    --wrap 'echo "gpus=$CUDA_VISIBLE_DEVICES"') || fail "sbatch of a one-GPU job failed"
[ "$(cat "$smoke")" = "gpus=0" ] || fail "GPU job $jobid wrote '$(cat "$smoke")', expected gpus=0"
job_in_sacct() { sacct -X -n -P -o State -j "$jobid" | grep -qx COMPLETED; }
wait_for 30 "job $jobid COMPLETED in sacct" job_in_sacct

echo "slurm cluster up: node $host, $gpus fake GPUs, state and logs in $STATE"
sinfo -N -o "%N %c %m %G %T"
