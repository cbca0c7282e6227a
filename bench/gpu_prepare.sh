#!/usr/bin/env bash
# Stages, here, what bench/gpu_check.sh needs on the lent GPU machine that the checkout does not hold, into
# the ignored folder bench/gpu_payload/ (carry it: run(..., carry=["bench/gpu_payload"])):
#   wheels/               ml_collections (pure Python; the GPU machine has the absl-py and PyYAML it needs)
#   cifar10_lt200.tar.gz  the image folder cifar10_lt200/: the CIFAR-10-LT rho=200 training images that the
#                         LDAM-DRW code keeps (longtail.select_longtail, "ldam", seed 0) and the whole test
#                         set, copied from ../shared/data/cifar10 with their file names, so that
#                         train/<class>/NNNN.jpg is still the NNNN-th image of its class in the original
#                         release order; its manifest.json records the profile and the selected images' ids
#                         in the full training folder. One archive rather than 21,000 files of about 1 KB:
#                         it travels faster, and its size does not depend on how file blocks are counted.
# Then checks that the checkout plus the payload fit the 64 MiB that a device call carries, and prints sizes.
#
# Environment [defaults]: CIFAR10_SOURCE [../shared/data/cifar10], PAYLOAD [bench/gpu_payload], RHO [200],
# PYTHON [.venv/bin/python]. A wheel already staged is not downloaded again.
set -euo pipefail
cd "$(dirname "$0")/.."

SOURCE=${CIFAR10_SOURCE:-../shared/data/cifar10}
PAYLOAD=${PAYLOAD:-bench/gpu_payload}
RHO=${RHO:-200}
PYTHON=${PYTHON:-.venv/bin/python}
CARRY_LIMIT_BYTES=$((64 * 1024 * 1024))
ML_COLLECTIONS=ml-collections==1.1.0  # the version in requirements.txt

if [[ ! -d $SOURCE/train || ! -d $SOURCE/test ]]; then
    echo "gpu_prepare: $SOURCE has no train/ and test/ image folders (set CIFAR10_SOURCE)" >&2
    exit 1
fi
mkdir -p "$PAYLOAD/wheels"
if ! compgen -G "$PAYLOAD/wheels/ml_collections-*.whl" >/dev/null; then
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$PAYLOAD/wheels" "$ML_COLLECTIONS"
fi

STAGING=$(mktemp -d)
trap 'rm -rf "$STAGING"' EXIT
TREE="$STAGING/cifar10_lt$RHO"
ARCHIVE="$PAYLOAD/cifar10_lt$RHO.tar.gz"
"$PYTHON" - "$SOURCE" "$TREE" "$RHO" <<'EOF'
"""Copies the long-tailed training subset and the full test set, keeping folder and file names."""
import json
import pathlib
import shutil
import sys

import numpy as np

from configs import cifar10_lt
from safa_jax.data import longtail, sources

source, tree, rho = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
data_config = cifar10_lt.get_config(rho).data
# The folder source's own listing, so that ids are positions in its (class, file name) order, as in a run.
files, labels, class_names = sources._list_image_folder(source / "train", None)
n_max = int(np.bincount(labels).min())
counts = longtail.longtail_class_counts(n_max, len(class_names), data_config.imbalance_factor)
ids = np.sort(longtail.select_longtail(labels, counts, data_config.selection, data_config.selection_seed))
for i in ids:
    target = tree / "train" / files[i].parent.name / files[i].name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files[i], target)
shutil.copytree(source / "test", tree / "test")
manifest = {
    "source": str(source), "imbalance_factor": data_config.imbalance_factor, "n_max": n_max,
    "selection": data_config.selection, "selection_seed": data_config.selection_seed,
    "class_names": list(class_names), "class_counts": counts.tolist(),
    "source_train_ids": ids.tolist(),  # staged image k, in (class, file name) order, is source image ids[k].
}
(tree / "manifest.json").write_text(json.dumps(manifest))
print(f"staged {len(ids)} training images (per class {counts.tolist()}) and the test set")
EOF
# Sorted names, fixed owner and times: the same selection always gives the same archive.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$STAGING" -czf "$ARCHIVE" "cifar10_lt$RHO"

# Tracked and untracked-not-ignored files travel with every call (a deleted tracked file is skipped).
checkout_bytes=$(git ls-files -z --cached --others --exclude-standard \
    | { xargs -0 stat --printf='%s\n' 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}')
payload_bytes=$(du -sb "$PAYLOAD" | cut -f1)
total=$((checkout_bytes + payload_bytes))
du -sh --apparent-size "$PAYLOAD"/wheels "$ARCHIVE" "$TREE"/train "$TREE"/test
echo "checkout ${checkout_bytes} B + payload ${payload_bytes} B = ${total} B;" \
    "a device call carries at most ${CARRY_LIMIT_BYTES} B"
if ((total > CARRY_LIMIT_BYTES)); then
    echo "gpu_prepare: too large to carry: remove files from $PAYLOAD or the checkout" >&2
    exit 1
fi
