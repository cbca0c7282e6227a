#!/usr/bin/env bash
# Deletes the queued resource together with its TPU VM (--force), which stops the billing; the runs in RUN_DIR
# stay in Cloud Storage. gcloud asks for confirmation first.
set -euo pipefail

USAGE="usage: [SETTINGS=path] [DRY_RUN=1] launch/delete.sh [--dry-run]
Deletes queued resource QUEUED_RESOURCE_ID in ZONE and its TPU VM TPU_NAME."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_args "$@"
reject_arguments
load_settings
require_settings PROJECT ZONE QUEUED_RESOURCE_ID

run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE_ID" --zone="$ZONE" --project="$PROJECT" --force
