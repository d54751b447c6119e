#!/usr/bin/env bash
# Install the Debian packages of a single-node Slurm cluster with accounting (as root).
# Does nothing when they are already installed, so CI can call it on every run.
set -euo pipefail
needed=(slurmctld slurmd slurmdbd sbatch sacct munged mariadbd)
missing=()
for b in "${needed[@]}"; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "slurm packages present"
    exit 0
fi
echo "installing slurm packages (missing: ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# The packages' maintainer scripts try to start services through systemd; up.sh starts the
# daemons itself, so a start refused by policy-rc.d in a container is harmless.
apt-get install -y -q --no-install-recommends slurm-wlm slurm-client munge slurmdbd mariadb-server
