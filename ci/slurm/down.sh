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

# Alive and not a zombie (an exited daemon whose parent has not reaped it yet).
running() { kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }

stop() {
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && running "$pid"; then
        kill -TERM "$pid"
        for _ in $(seq 1 40); do
            running "$pid" || break
            sleep 0.5
        done
        if running "$pid"; then
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
