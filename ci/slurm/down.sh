#!/usr/bin/env bash
# Stop the local cluster started by up.sh: cancel its jobs, then end each daemon by the PID
# in its PID file (slurmd, slurmctld, slurmdbd, mariadbd, munged), waiting for each to exit.
# State and logs stay under $KAPPADIFF_SLURM_STATE for inspection. Safe to run when down.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$here/env.sh"

if [ -f "$SLURM_ETC/slurm.conf" ] && grep -qF "$MARKER" "$SLURM_ETC/slurm.conf" &&
    scontrol ping >/dev/null 2>&1; then
    mapfile -t jobs < <(squeue -h -o %A 2>/dev/null || true)
    [ ${#jobs[@]} -eq 0 ] || scancel "${jobs[@]}" 2>/dev/null || true
fi

stop() {
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "down.sh: $name ($pid) ignored SIGTERM for 20 s, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

stop slurmd "$STATE/slurmd.pid"
stop slurmctld "$STATE/slurmctld.pid"
stop slurmdbd "$STATE/slurmdbd.pid"
stop mariadbd "$STATE/mariadb/mariadb.pid"
stop munged /run/munge/munged.pid
