#!/usr/bin/env bash
# Each worker writes its own log on its own disk (run.sh); this copies them all here, or follows one live.
set -euo pipefail

USAGE="usage: [SETTINGS=path] [DRY_RUN=1] launch/logs.sh [--dry-run] RUN_NAME [--follow] [--worker=N]
Default: copies REMOTE_DIR/logs/RUN_NAME.log of every worker (or of worker N) to LOCAL_LOG_DIR/RUN_NAME/N.log.
--follow: streams the log of one worker (worker N, default 0) until interrupted."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
run_name=""
follow=0
worker=""
for arg in "${ARGS[@]}"; do
    case "$arg" in
        --follow) follow=1 ;;
        --worker=*) worker="${arg#--worker=}" ;;
        -*) usage_error "unknown argument '$arg'" ;;
        *)
            if [[ -n $run_name ]]; then
                usage_error "unknown argument '$arg' (RUN_NAME is already '$run_name')"
            fi
            run_name="$arg"
            ;;
    esac
done
if [[ -z $run_name ]]; then
    usage_error "RUN_NAME is missing"
fi
if [[ -n $worker && ! $worker =~ ^(0|[1-9][0-9]*)$ ]]; then
    usage_error "--worker must be a worker index 0, 1, 2, ..., got '$worker'"
fi
load_settings
require_settings PROJECT ZONE TPU_NAME REMOTE_DIR LOCAL_LOG_DIR

remote_log="$(shell_quote "$REMOTE_DIR/logs/$run_name.log")"
if ((follow)); then
    tpu_ssh "${worker:-0}" "tail -n 100 -F $remote_log"
else
    # gcloud writes what each worker prints to OUTPUT_DIRECTORY/WORKER.log.
    local_dir="${LOCAL_LOG_DIR%/}/$run_name"
    run mkdir -p "$local_dir"
    tpu_ssh "${worker:-all}" "cat $remote_log" --output-directory="$local_dir"
fi
