#!/usr/bin/env bash
# Starts one training run on every worker at once (a pod runs one program, one process per host), detached
# with nohup so that a dropped ssh connection does not stop it.
set -euo pipefail

USAGE="usage: [SETTINGS=path] [DRY_RUN=1] [RUN_NAME=name] launch/run.sh [--dry-run] CONFIG [--FLAG=VALUE ...]
On every worker of TPU_NAME, in the background: SAFA_JAX_DISTRIBUTED=1 python -m safa_jax.main
--config=CONFIG --workdir=RUN_DIR/RUN_NAME --config.data.data_dir=DATA_DIR [--FLAG=VALUE ...],
output in REMOTE_DIR/logs/RUN_NAME.log on each worker (see launch/logs.sh).
CONFIG is a path in the repository, optionally with its argument (configs/cifar10_lt.py:200).
RUN_NAME defaults to the config's name and argument (cifar10_lt_200); a run with the same RUN_NAME resumes
from its checkpoints. Extra flags go to safa_jax.main and must be written --FLAG=VALUE."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
if ((${#ARGS[@]} == 0)); then
    usage_error "CONFIG is missing"
fi
config="${ARGS[0]}"
main_flags=("${ARGS[@]:1}")
for flag in "${main_flags[@]}"; do
    if [[ $flag != --?*=* ]]; then
        usage_error "unknown argument '$flag' (extra flags for safa_jax.main are written --FLAG=VALUE)"
    fi
done
config_file="${config%%:*}"
if [[ ! -f $REPO_ROOT/$config_file ]]; then
    usage_error "config file '$config_file' not found in $REPO_ROOT (a path in the repository: configs/inat18.py)"
fi
default_run_name="$(basename "$config_file" .py)"
if [[ $config == *:* ]]; then
    default_run_name+="_${config#*:}"
fi
run_name="${RUN_NAME:-$default_run_name}"
if [[ ! $run_name =~ ^[A-Za-z0-9._-]+$ ]]; then
    usage_error "RUN_NAME must use only letters, digits, '.', '_' and '-', got '$run_name'"
fi
load_settings
require_settings PROJECT ZONE TPU_NAME DATA_DIR RUN_DIR REMOTE_DIR
require_gcs_path DATA_DIR
require_gcs_path RUN_DIR

log_file="logs/$run_name.log"
train_command="$(shell_quote .venv/bin/python -m safa_jax.main --config="$config" \
    --workdir="${RUN_DIR%/}/$run_name" --config.data.data_dir="$DATA_DIR" "${main_flags[@]}")"
start_detached="SAFA_JAX_DISTRIBUTED=1 nohup $train_command > $(shell_quote "$log_file") 2>&1 < /dev/null &"
tpu_ssh all "cd $(shell_quote "$REMOTE_DIR") && mkdir -p logs && $start_detached"
if ! is_dry_run; then
    echo "started $run_name on every worker of $TPU_NAME; follow it with: launch/logs.sh $run_name --follow" >&2
fi
