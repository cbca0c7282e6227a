#!/usr/bin/env bash
# Puts the code and a virtualenv on every worker of the TPU VM. jax[tpu] is pinned to requirements.txt's jax
# version, so the TPU runtime matches the jax that the tests ran against.
set -euo pipefail

USAGE="usage: [SETTINGS=path] [DRY_RUN=1] launch/setup.sh [--dry-run]
On every worker of TPU_NAME: copies the code (this checkout's last commit, or REPO_URL at REPO_REF) into
REMOTE_DIR, installs REMOTE_PYTHON if missing, and creates REMOTE_DIR/.venv with requirements.txt and
jax[tpu] at requirements.txt's jax version. Run again after a new commit to update the code."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
reject_arguments
load_settings
require_settings PROJECT ZONE TPU_NAME REMOTE_DIR REMOTE_PYTHON
if [[ -n $REPO_URL ]]; then
    require_settings REPO_REF
fi
if [[ ! $REMOTE_PYTHON =~ ^python3\.[0-9]+$ ]]; then
    die "REMOTE_PYTHON in $SETTINGS must name a python3.N interpreter (e.g. python3.11), got '$REMOTE_PYTHON'"
fi
requirements="$REPO_ROOT/requirements.txt"
jax_version="$(sed -n 's/^jax==\([^[:space:];#]*\).*/\1/p' "$requirements")"
if [[ -z $jax_version ]]; then
    die "no 'jax==VERSION' line in $requirements: jax[tpu] is installed at that version"
fi

archive_name="safa_jax_code.tar.gz"
remote_dir="$(shell_quote "$REMOTE_DIR")"
if [[ -z $REPO_URL ]]; then
    local_archive="${TMPDIR:-/tmp}/$TPU_NAME-$archive_name"
    run git -C "$REPO_ROOT" archive --format=tar.gz --output="$local_archive" HEAD
    run gcloud compute tpus tpu-vm scp "$local_archive" "$TPU_NAME:$archive_name" --zone="$ZONE" \
        --project="$PROJECT" --worker=all
    get_code="mkdir -p $remote_dir && tar -xzf $archive_name -C $remote_dir && rm $archive_name"
else
    get_code="{ test -d $remote_dir/.git || git clone $(shell_quote "$REPO_URL" "$REMOTE_DIR"); }"
    get_code+=" && git -C $remote_dir fetch origin $(shell_quote "$REPO_REF")"
    get_code+=" && git -C $remote_dir checkout --force FETCH_HEAD"
fi
# A fresh VM may still be running unattended upgrades: wait for the apt lock instead of failing.
install_python="{ command -v $REMOTE_PYTHON >/dev/null || { sudo apt-get -q update"
install_python+=" && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600"
install_python+=" $REMOTE_PYTHON $REMOTE_PYTHON-venv; }; }"
make_venv="cd $remote_dir && $REMOTE_PYTHON -m venv .venv && .venv/bin/pip install -q --upgrade pip"
make_venv+=" && .venv/bin/pip install -q -r requirements.txt $(shell_quote "jax[tpu]==$jax_version")"

tpu_ssh all "$get_code && $install_python && $make_venv"
