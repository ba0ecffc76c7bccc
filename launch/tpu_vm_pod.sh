#!/usr/bin/env bash
# Runs a metalearn experiment on every worker of a Cloud TPU VM: a pod slice
# (v4-32, v5e-16, ...: several hosts, one process each, joined by JAX's
# multi-controller runtime) or a single-host TPU VM (v4-8, v5e-8).
#
#   launch/tpu_vm_pod.sh --tpu=NAME --zone=ZONE --workdir=/mnt/shared/runs/sinusoid \
#       [--project=PROJECT] [--nfs=SERVER:/SHARE | --bucket=BUCKET] [--setup] [--detach] \
#       [--config=experiments/configs/sinusoid.py] [-- --config.meta_batch_size=32 ...]
#
# What it does, from the checkout it lives in:
#   1. packs this checkout (tracked files and untracked ones git does not ignore)
#      and unpacks it on every worker in ~/metalearn;
#   2. with --setup, or on a worker without ~/metalearn-venv, creates that
#      virtual environment and installs the package with jax[tpu];
#   3. with --nfs (a Filestore / NFS export) or --bucket (a GCS bucket, through
#      gcsfuse), mounts it at /mnt/shared on every worker;
#   4. runs `python -m experiments.meta_train --distributed=on ...` on all
#      workers at once; JAX finds the coordinator and the process ids itself.
#
# The workdir must be one folder that every worker sees (the NFS or gcsfuse
# mount above): checkpoints are written collectively and read by every host on
# resume; the run stops with a clear error otherwise. Running the same command
# again (e.g. after a preemption) resumes from the last complete checkpoint.
# The meta-batch must divide over all TPU cores of the slice (e.g. 32 on a
# v4-32: 16 chips). --detach leaves the run going after this script returns
# (log in ~/metalearn-run.log on each worker). GCLOUD_FLAGS (e.g.
# "--internal-ip") is added to every gcloud call.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

TPU="" ZONE="" PROJECT="" WORKDIR="" NFS="" BUCKET="" SETUP=0 DETACH=0
CONFIG="experiments/configs/sinusoid.py"
JAX_SPEC="jax[tpu]>=0.10.2,<0.11"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --nfs=*) NFS="${1#*=}" ;;
    --bucket=*) BUCKET="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --setup) SETUP=1 ;;
    --detach) DETACH=1 ;;
    -h | --help) usage 0 ;;
    --) shift; break ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$TPU" && -n "$ZONE" && -n "$WORKDIR" ]] || {
  echo "--tpu, --zone and --workdir are required (see --help)" >&2
  exit 2
}
[[ -z "$NFS" || -z "$BUCKET" ]] || { echo "give --nfs or --bucket, not both" >&2; exit 2; }
command -v gcloud >/dev/null || { echo "gcloud is not installed (cloud.google.com/sdk)" >&2; exit 2; }

cd "$(dirname "$0")/.."
gcloud_args=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || gcloud_args+=(--project="$PROJECT")
# shellcheck disable=SC2206  # GCLOUD_FLAGS is a list of flags, split on purpose
[[ -z "${GCLOUD_FLAGS:-}" ]] || gcloud_args+=(${GCLOUD_FLAGS})

on_all_workers() {  # on_all_workers COMMAND: runs COMMAND on every worker, in parallel
  gcloud compute tpus tpu-vm ssh "$TPU" "${gcloud_args[@]}" --worker=all --command="$1"
}

echo "== 1. copying this checkout to every worker of $TPU"
tarball=$(mktemp -t metalearn-XXXXXX.tgz)
trap 'rm -f "$tarball"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -czf "$tarball" -T -
gcloud compute tpus tpu-vm scp "$tarball" "$TPU:metalearn.tgz" "${gcloud_args[@]}" --worker=all
on_all_workers 'rm -rf ~/metalearn && mkdir -p ~/metalearn && tar -xzf ~/metalearn.tgz -C ~/metalearn'

echo "== 2. Python environment (~/metalearn-venv)"
setup="python3 -m venv ~/metalearn-venv || { sudo apt-get update -qq && \
sudo apt-get install -y -qq python3-venv && python3 -m venv ~/metalearn-venv; }
~/metalearn-venv/bin/pip install -q --upgrade pip
~/metalearn-venv/bin/pip install -q -e ~/metalearn $(printf %q "$JAX_SPEC")"
if [[ "$SETUP" == 1 ]]; then
  on_all_workers "set -e; rm -rf ~/metalearn-venv; $setup"
else
  on_all_workers "set -e; if [ ! -x ~/metalearn-venv/bin/python ]; then $setup; fi"
fi

if [[ -n "$NFS" ]]; then
  echo "== 3. mounting $NFS at /mnt/shared"
  on_all_workers "set -e; if ! mountpoint -q /mnt/shared; then \
command -v mount.nfs >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq nfs-common; }; \
sudo mkdir -p /mnt/shared && sudo mount -t nfs -o rw,hard $(printf %q "$NFS") /mnt/shared; fi"
elif [[ -n "$BUCKET" ]]; then
  echo "== 3. mounting gs://$BUCKET at /mnt/shared (gcsfuse)"
  on_all_workers "set -e; if ! mountpoint -q /mnt/shared; then \
if ! command -v gcsfuse >/dev/null; then \
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi; \
sudo mkdir -p /mnt/shared && sudo chown \"\$(id -u):\$(id -g)\" /mnt/shared && \
gcsfuse --implicit-dirs $(printf %q "$BUCKET") /mnt/shared; fi"
fi

echo "== 4. running on all workers"
run="cd ~/metalearn && ~/metalearn-venv/bin/python -m experiments.meta_train \
--config=$(printf %q "$CONFIG") --workdir=$(printf %q "$WORKDIR") --distributed=on"
for arg in "$@"; do
  run+=" $(printf %q "$arg")"
done
if [[ "$DETACH" == 1 ]]; then
  on_all_workers "nohup bash -c $(printf %q "$run") > ~/metalearn-run.log 2>&1 < /dev/null &"
  echo "started; follow it with:"
  echo "  gcloud compute tpus tpu-vm ssh $TPU ${gcloud_args[*]} --worker=0 --command='tail -f ~/metalearn-run.log'"
else
  on_all_workers "$run"
fi
