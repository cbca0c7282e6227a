# shellcheck shell=bash
# Sourced by every launch script: argument and settings handling, and the one place commands are run, so
# that a dry run shows exactly what a real run would do. The sourcing script sets USAGE first.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT_NAME="launch/$(basename "$0")"

# Settings come only from the settings file (sourced after unsetting these), so a stray exported variable
# cannot silently change which TPU is used.
SETTING_NAMES=(PROJECT ZONE TPU_NAME QUEUED_RESOURCE_ID ACCELERATOR_TYPE RUNTIME_VERSION PROVISIONING
    DATA_DIR RUN_DIR REPO_URL REPO_REF REMOTE_DIR REMOTE_PYTHON POLL_SECONDS LOCAL_LOG_DIR)

# Commands shown by a dry run go to the original stdout, even from inside $(...).
exec 3>&1

die() {
    echo "$SCRIPT_NAME: error: $*" >&2
    exit 1
}

usage_error() {
    printf '%s: error: %s\n%s\n' "$SCRIPT_NAME" "$1" "$USAGE" >&2
    exit 2
}

# Prints one word so that a shell reads it back unchanged, quoting only where needed and only the value of a
# --flag=value word, to keep the shown commands readable.
quote_word() {
    local word="$1"
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
        echo "$word"
    elif [[ $word =~ ^(--[A-Za-z0-9._-]+=)(.+)$ ]]; then
        echo "${BASH_REMATCH[1]}$(quote_word "${BASH_REMATCH[2]}")"
    elif [[ $word != *[\"\$\`\\!]* ]]; then
        echo "\"$word\""
    else
        echo "'${word//\'/\'\\\'\'}'"
    fi
}

# Prints the arguments as one shell command line; used both to show commands and to build the command lines
# sent over ssh.
shell_quote() {
    local word
    local quoted=()
    for word in "$@"; do
        quoted+=("$(quote_word "$word")")
    done
    echo "${quoted[*]}"
}

is_dry_run() {
    [[ $DRY_RUN == 1 ]]
}

# Shows the command as "+ command"; runs it unless this is a dry run. The trace of a real run goes to stderr
# so that callers can capture the command's own output.
run() {
    if is_dry_run; then
        echo "+ $(shell_quote "$@")" >&3
        return 0
    fi
    echo "+ $(shell_quote "$@")" >&2
    "$@"
}

# Handles the options every script shares (--dry-run, --help) and leaves the other arguments in ARGS.
parse_common_args() {
    DRY_RUN="${DRY_RUN:-0}"
    if [[ $DRY_RUN != 0 && $DRY_RUN != 1 ]]; then
        usage_error "DRY_RUN must be 0 or 1, got '$DRY_RUN'"
    fi
    ARGS=()
    local arg
    for arg in "$@"; do
        case "$arg" in
            --dry-run) DRY_RUN=1 ;;
            -h | --help)
                echo "$USAGE"
                exit 0
                ;;
            *) ARGS+=("$arg") ;;
        esac
    done
}

# For the scripts that take no arguments besides the shared options.
reject_arguments() {
    if ((${#ARGS[@]} > 0)); then
        usage_error "unknown argument '${ARGS[0]}'"
    fi
}

load_settings() {
    SETTINGS="${SETTINGS:-$REPO_ROOT/launch/settings.env}"
    if [[ ! -f $SETTINGS ]]; then
        die "settings file '$SETTINGS' not found (copy launch/settings.env, edit it, and pass SETTINGS=path)"
    fi
    unset "${SETTING_NAMES[@]}"
    # shellcheck source=settings.env
    source "$SETTINGS"
}

# Fails, naming every missing variable and the file, when any of the given settings is empty.
require_settings() {
    local name
    local missing=()
    for name in "$@"; do
        if [[ -z ${!name:-} ]]; then
            missing+=("$name")
        fi
    done
    if ((${#missing[@]} > 0)); then
        die "missing settings in $SETTINGS: ${missing[*]} (each must be set to a non-empty value)"
    fi
}

# A pod's workers share no disk: data and run folders must be in Cloud Storage for all of them to see.
require_gcs_path() {
    local name="$1"
    if [[ ${!name} != gs://?* ]]; then
        die "$name in $SETTINGS must be a gs:// path that every worker can reach, got '${!name}'"
    fi
}

# Runs a shell command line over ssh on the given workers of the TPU VM ("all", or an index), with any extra
# gcloud arguments after it.
tpu_ssh() {
    local worker="$1"
    local command_line="$2"
    shift 2
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --worker="$worker" \
        --command="$command_line" "$@"
}
