#!/usr/bin/env bash
# Requests the TPU VM through a queued resource (the way capacity is granted today) and waits until it is
# ACTIVE, so that setup.sh can follow at once.
set -euo pipefail

USAGE="usage: [SETTINGS=path] [DRY_RUN=1] launch/create.sh [--dry-run]
Creates queued resource QUEUED_RESOURCE_ID for TPU VM TPU_NAME (ACCELERATOR_TYPE, RUNTIME_VERSION,
PROVISIONING) in ZONE, then checks its state every POLL_SECONDS until it is ACTIVE."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
reject_arguments
load_settings
require_settings PROJECT ZONE TPU_NAME QUEUED_RESOURCE_ID ACCELERATOR_TYPE RUNTIME_VERSION PROVISIONING POLL_SECONDS
if [[ ! $ACCELERATOR_TYPE =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]]; then
    die "ACCELERATOR_TYPE in $SETTINGS must look like v4-32, v5litepod-16 or v6e-8, got '$ACCELERATOR_TYPE'"
fi
case "$PROVISIONING" in
    on-demand) provisioning_flags=() ;;
    spot) provisioning_flags=(--spot) ;;
    reserved) provisioning_flags=(--reserved) ;;
    *) die "PROVISIONING in $SETTINGS must be one of on-demand, spot, reserved, got '$PROVISIONING'" ;;
esac
if [[ ! $POLL_SECONDS =~ ^[1-9][0-9]*$ ]]; then
    die "POLL_SECONDS in $SETTINGS must be a positive whole number, got '$POLL_SECONDS'"
fi

run gcloud compute tpus queued-resources create "$QUEUED_RESOURCE_ID" --zone="$ZONE" --project="$PROJECT" \
    --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
    "${provisioning_flags[@]}"

# A request can wait for capacity for hours (ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING); stop only on
# ACTIVE or on a state it cannot leave by itself.
while true; do
    state="$(run gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE_ID" --zone="$ZONE" \
        --project="$PROJECT" --format='value(state.state)')"
    if is_dry_run; then
        break
    fi
    case "$state" in
        ACTIVE)
            echo "$QUEUED_RESOURCE_ID is ACTIVE: TPU VM $TPU_NAME is ready; next: launch/setup.sh" >&2
            break
            ;;
        FAILED | SUSPENDING | SUSPENDED | DELETING)
            die "queued resource $QUEUED_RESOURCE_ID is $state (details: gcloud compute tpus queued-resources" \
                "describe $QUEUED_RESOURCE_ID --zone=$ZONE --project=$PROJECT)"
            ;;
    esac
    echo "$QUEUED_RESOURCE_ID is ${state:-not visible yet}; checking again in ${POLL_SECONDS}s" >&2
    sleep "$POLL_SECONDS"
done
