#!/usr/bin/env bash
# The one-lease GPU reproduction (at most about 8.5 minutes on one H100/H200 with no network), run from the
# root of the device's copy after bench/gpu_prepare.sh staged bench/gpu_payload here:
#   run(command="bash bench/gpu_check.sh", carry=["bench/gpu_payload"], timeout_s=600)
#
# 1. the machine: nvidia-smi, package versions, jax.devices();
# 2. bench/train_step.py: ResNet-32 train-step images/s, JAX against PyTorch (CUDA), with SAFA too, and the
#    training time that those rates predict (with a note and an EPOCHS that fits if 200 epochs do not);
# 3. the full CIFAR-10-LT rho=200 trainings (configs/cifar10_lt.py:200, 200 epochs) of LDAM-DRW and
#    LDAM-DRW-SAFA on the staged real images, both at once on the GPU unless PARALLEL=0 (a ResNet-32 step
#    at batch 128 is bound by kernel launches rather than arithmetic, so two runs share the GPU well);
# 4. a summary: each run's final top-1 error, many/medium/few accuracy and wall time, beside the
#    supplementary's 22.47% top-1 error for LDAM-DRW-SAFA (stage 2).
# Each part runs under `timeout`, so one slow part cannot use up the lease. Everything printed also goes to
# $OUT/gpu_check.log; each training's log, metrics and results come back as $OUT/<run>.* (7 files).
#
# The staged images (bench/gpu_payload/cifar10_lt200.tar.gz, unpacked into $RUNS) are already long-tailed,
# so the trainings read them with data.subsample=False. The training counts are then the staged ones
# (5000, 2775, ..., 25, checked below against the rho=200 profile and the manifest), and the many/medium/few
# groups, which evaluation derives from the training counts, are those of rho=200 (7 many, 3 medium, 0 few).
# Mean and std are CIFAR's fixed values from the config, as in a run that subsamples the full folder; only
# the order of the training images differs from such a run (file-name order instead of the LDAM shuffle), so
# batches are composed differently, from the same images.
#
# Budget, on paper (not yet measured on a GPU): the limits add up to about 8.5 minutes. A 200-epoch run is
# 200 x 87 = 17,400 steps; in the ~310 s of the 340 s training limit left after start-up and compilation,
# the two runs at once need about 56 steps/s each (7,200 images/s each, 14,400 together; one after the
# other, 112 steps/s). A step is 48.7 GFLOP (XLA's count, batch 128), so that is about 5.5 TFLOP/s, far
# under an H100's float32 rate; the limit is the few hundred small kernels a step launches (a few us each:
# roughly 2-4 ms a step, 250-500 steps/s). So 2 x 200 epochs should fit, with an unmeasured margin: the
# script predicts the time from the measured step rates before training and names an EPOCHS that fits.
#
# Environment [defaults]: PYTHON [python3], PAYLOAD [bench/gpu_payload], RHO [200: which staged archive],
# OUT [bench/out/gpu_check; the device sets it], RUNS [/tmp/safa_gpu_check_runs: run folders and images],
# TRAININGS ["ldam_drw ldam_drw_safa"], EPOCHS [200], PARALLEL [1], TRAIN_STEP_REPEATS [5],
# TRAIN_STEP_STEPS [50], TRAIN_STEP_WARMUP [5], TRAIN_STEP_TIMEOUT_S [150], TRAIN_TIMEOUT_S [340: the
# training part; with PARALLEL=0 each run gets its share], TRAIN_STEP_ARGS [--safa: more bench/train_step.py
# flags] and TRAIN_FLAGS [none: more --config.* overrides for the runs], e.g. for a tiny model on the CPU.
# EPOCHS other than 200 is NOT the paper's protocol: the script says so and scales the epoch milestones.
# Exit code: 0 when every training finished, 1 when one did not, 2 on bad settings or a missing payload.
set -uo pipefail
cd "$(dirname "$0")/.." || exit

PYTHON=${PYTHON:-python3}
PAYLOAD=${PAYLOAD:-bench/gpu_payload}
RHO=${RHO:-200}
OUT=${OUT:-bench/out/gpu_check}
RUNS=${RUNS:-/tmp/safa_gpu_check_runs}
ARCHIVE="$PAYLOAD/cifar10_lt$RHO.tar.gz"
DATA="$RUNS/cifar10_lt$RHO"
EPOCHS=${EPOCHS:-200}
PARALLEL=${PARALLEL:-1}
TRAIN_STEP_REPEATS=${TRAIN_STEP_REPEATS:-5}
TRAIN_STEP_STEPS=${TRAIN_STEP_STEPS:-50}
TRAIN_STEP_WARMUP=${TRAIN_STEP_WARMUP:-5}
TRAIN_STEP_TIMEOUT_S=${TRAIN_STEP_TIMEOUT_S:-150}
TRAIN_TIMEOUT_S=${TRAIN_TIMEOUT_S:-340}
read -ra TRAINING_NAMES <<<"${TRAININGS:-ldam_drw ldam_drw_safa}"
TRAIN_STEP_ARGS=${TRAIN_STEP_ARGS-"--safa"}  # unset: --safa; set, even to "": as given.
read -ra TRAIN_STEP_EXTRA <<<"$TRAIN_STEP_ARGS"
read -ra TRAIN_EXTRA <<<"${TRAIN_FLAGS:-}"
PROTOCOL_EPOCHS=200
BATCH_SIZE=128  # the recipe's; used to predict the number of steps.

print_machine() {
    echo "== machine ($(date -u '+%Y-%m-%d %H:%M:%S UTC'))"
    echo "$(nproc) CPU cores; $(uname -sr)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
    else
        echo "nvidia-smi: not found (no NVIDIA GPU on this machine)"
    fi
    "$PYTHON" - <<'EOF'
import importlib.metadata
import sys

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "numpy", "pillow", "ml-collections",
            "absl-py")


def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


print(f"Python {sys.version.split()[0]}; " + ", ".join(f"{name} {version(name)}" for name in PACKAGES))
print("jax.devices():", jax.devices())
EOF
}

# ml_collections is pure Python; the GPU machine lacks it, so it comes as a staged wheel.
ensure_ml_collections() {
    "$PYTHON" -c "import ml_collections" 2>/dev/null && return 0
    local site=/tmp/safa_site
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" \
        "$PAYLOAD"/wheels/ml_collections-*.whl || return 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}

# The config overrides that make a training one of TRAININGS.
variant_flags() {
    case $1 in
        ldam_drw) ;;
        ldam_drw_safa) echo "--config.method=safa" ;;
        *) return 1 ;;
    esac
}

# Flags that scale the recipe's epoch milestones (warm-up 5; lr decays, DRW and SAFA at 160 and 180 of 200).
schedule_flags() {
    [[ $EPOCHS == "$PROTOCOL_EPOCHS" ]] && return 0
    local warmup=$((EPOCHS * 5 / PROTOCOL_EPOCHS)) second=$((EPOCHS * 160 / PROTOCOL_EPOCHS))
    local third=$((EPOCHS * 180 / PROTOCOL_EPOCHS))
    ((warmup < 1)) && warmup=1
    echo "NOTE: EPOCHS=$EPOCHS is NOT the paper's $PROTOCOL_EPOCHS-epoch protocol: warm-up $warmup epoch(s);" \
        "lr x0.01, DRW and SAFA's augmented features from epoch $second; lr x0.0001 from epoch $third." \
        "These results do not compare with published numbers." >&2
    echo "--config.num_epochs=$EPOCHS --config.optim.warmup_epochs=$warmup" \
        "--config.optim.decay_epochs=($second,$third) --config.loss.second_stage_epoch=$second" \
        "--config.safa.start_epoch=$second"
}

# run_training NAME SECONDS FLAGS...: one training; its exit code and wall seconds go to $RUNS/NAME.status.
run_training() {
    local name=$1 limit=$2
    shift 2
    rm -rf "${RUNS:?}/$name"
    local start=$SECONDS
    timeout "$limit" "$PYTHON" -m safa_jax.main --workdir="$RUNS/$name" "$@" >"$OUT/$name.log" 2>&1
    echo "$? $((SECONDS - start))" >"$RUNS/$name.status"
}

predict_training_time() {
    "$PYTHON" - "$RUNS/train_step.txt" "$DATA/manifest.json" "$EPOCHS" "$BATCH_SIZE" "$TRAIN_TIMEOUT_S" \
        "$PARALLEL" "${TRAINING_NAMES[@]}" <<'EOF'
"""The training time that the measured step rates predict, and whether it fits the time left for training."""
import json
import re
import sys

STEP_OF_RUN = {"ldam_drw": "jax", "ldam_drw_safa": "jax+safa"}  # SAFA's full step, though cheaper before start_epoch

bench, manifest = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
epochs, batch_size, budget = (int(value) for value in sys.argv[3:6])
parallel, names = sys.argv[6] == "1", sys.argv[7:]
rates = dict(re.findall(r"^(jax|jax\+safa) images/s: ([0-9.]+)", bench, re.MULTILINE))
steps = epochs * (sum(manifest["class_counts"]) // batch_size)
missing = [name for name in names if STEP_OF_RUN[name] not in rates]
if missing:
    sys.exit(f"no measured step rate for {', '.join(missing)} to predict from (ldam_drw_safa needs train_step.py "
             f"--safa); {steps} steps per run at batch {batch_size}")
seconds = {name: steps * batch_size / float(rates[STEP_OF_RUN[name]]) for name in names}
need = max(seconds.values()) if parallel else sum(seconds.values())
print(f"{steps} steps per run at batch {batch_size}. At the measured step rates: "
      + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
      + f"; {'at best the longest, if the GPU overlaps the runs fully' if parallel else 'in all'} {need:.0f} s, "
      f"plus start-up, compilation and evaluation, of {budget} s.")
if need > budget:
    fitting_epochs = max(1, int(epochs * budget / need / 1.2))
    print(f"NOTE: {epochs} epochs are not expected to finish in {budget} s; a run stopped at its limit keeps its "
          f"logged metrics. EPOCHS={fitting_epochs} should fit (milestones scaled; not the paper's protocol).")
EOF
}

summarize() {
    "$PYTHON" - "$RUNS" "$DATA/manifest.json" "$OUT" "$PARALLEL" "${TRAINING_NAMES[@]}" <<'EOF'
"""Each run's final figures, and a check that its class counts and shot groups are those of the staged profile."""
import json
import pathlib
import sys

from safa_jax.data.longtail import longtail_class_counts

PUBLISHED_SAFA_ERROR = {200.0: 22.47, 50.0: 16.43}  # top-1 error %, LDAM-DRW-SAFA stage 2 (SAFA_SPEC.md).

runs, manifest, out = pathlib.Path(sys.argv[1]), json.load(open(sys.argv[2])), sys.argv[3]
parallel, names = sys.argv[4] == "1", sys.argv[5:]
rho = manifest["imbalance_factor"]
profile = longtail_class_counts(manifest["n_max"], len(manifest["class_names"]), rho).tolist()


def fmt(value):
    return "n/a" if value is None else f"{value:.2f}"


rows, unfinished = [], []
for name in names:
    exit_code, seconds = (int(value) for value in (runs / f"{name}.status").read_text().split())
    results = runs / name / "eval_results.json"
    if not results.is_file():
        metrics = runs / name / "metrics.jsonl"
        last = json.loads(metrics.read_text().splitlines()[-1]) if metrics.is_file() else {}
        print(f"{name}: did not finish (exit code {exit_code}{', timed out' if exit_code == 124 else ''}) after "
              f"{seconds} s; last logged step {last.get('step', 'none')}; see {out}/{name}.log")
        rows.append(f"| {name} | - | - | - | - | {seconds} (stopped) |")
        unfinished.append(name)
        continue
    summary = json.loads(results.read_text())
    counts = json.loads((runs / name / "split.json").read_text())["class_counts"]
    batch_size = json.loads((runs / name / "config.json").read_text())["batch_size"]
    matches = counts == profile == manifest["class_counts"]
    print(f"{name}: class counts {counts} {'match' if matches else 'DO NOT match'} the rho={rho:g} profile "
          f"(n_max {manifest['n_max']}); shot groups: {summary['num_many_shot_classes']} many, "
          f"{summary['num_medium_shot_classes']} medium, {summary['num_few_shot_classes']} few classes")
    print(f"{name}: top-1 error {fmt(summary['top1_error'])} %, accuracy many {fmt(summary['many_shot_accuracy'])} "
          f"/ medium {fmt(summary['medium_shot_accuracy'])} / few {fmt(summary['few_shot_accuracy'])} %; "
          f"{summary['step']} steps in {seconds} s wall ({summary['step'] * batch_size / max(seconds, 1):.0f} "
          f"images/s with start-up, compilation and evaluation; exit code {exit_code})")
    rows.append(f"| {name} | {fmt(summary['top1_error'])} | {fmt(summary['many_shot_accuracy'])} | "
                f"{fmt(summary['medium_shot_accuracy'])} | {fmt(summary['few_shot_accuracy'])} | {seconds} |")
if rho in PUBLISHED_SAFA_ERROR:
    print(f"reference (SAFA supplementary, ResNet-32, CIFAR-10-LT rho={rho:g}): LDAM-DRW-SAFA stage 2, "
          f"{PUBLISHED_SAFA_ERROR[rho]}% top-1 error. Our images are JPEGs (quality 75): expect slightly higher.")
print(f"\n| run | top-1 error % | many % | medium % | few % | wall s{' (runs at once)' if parallel else ''} |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
sys.exit(1 if unfinished else 0)
EOF
}

main() {
    if ! [[ $EPOCHS =~ ^[1-9][0-9]*$ ]]; then
        echo "gpu_check: EPOCHS=$EPOCHS; allowed: a positive integer ($PROTOCOL_EPOCHS is the paper's protocol)"
        return 2
    fi
    local name
    for name in "${TRAINING_NAMES[@]}"; do
        variant_flags "$name" >/dev/null || {
            echo "gpu_check: TRAININGS has $name; allowed: ldam_drw, ldam_drw_safa"
            return 2
        }
    done
    if [[ ! -f $ARCHIVE ]]; then
        echo "gpu_check: $ARCHIVE not found; run bench/gpu_prepare.sh (RHO=$RHO) here and carry $PAYLOAD"
        return 2
    fi
    ensure_ml_collections || { echo "gpu_check: cannot install ml_collections from $PAYLOAD/wheels"; return 2; }
    print_machine
    rm -rf "${DATA:?}"
    mkdir -p "$RUNS"
    tar -xzf "$ARCHIVE" -C "$RUNS" || { echo "gpu_check: cannot unpack $ARCHIVE"; return 2; }

    echo "== train step: JAX vs PyTorch (limit ${TRAIN_STEP_TIMEOUT_S} s)"
    timeout "$TRAIN_STEP_TIMEOUT_S" "$PYTHON" bench/train_step.py --repeats "$TRAIN_STEP_REPEATS" \
        --steps "$TRAIN_STEP_STEPS" --warmup "$TRAIN_STEP_WARMUP" "${TRAIN_STEP_EXTRA[@]}" \
        | tee "$RUNS/train_step.txt"
    echo "train_step.py exit code ${PIPESTATUS[0]}"

    local schedule
    schedule=$(schedule_flags) || return 2
    read -ra schedule <<<"$schedule"
    local flags=("--config=configs/cifar10_lt.py:$RHO" "--config.data.source=folder:$DATA"
                 --config.data.subsample=False --config.loss.name=ldam --config.loss.train_rule=drw
                 --config.checkpoint_every_steps=1000000000 "${schedule[@]}" "${TRAIN_EXTRA[@]}")
    local limit=$TRAIN_TIMEOUT_S
    if [[ $PARALLEL == 1 ]]; then
        export XLA_PYTHON_CLIENT_MEM_FRACTION=0.4  # the JAX processes share the GPU's memory.
    else
        limit=$((TRAIN_TIMEOUT_S / ${#TRAINING_NAMES[@]}))
    fi
    predict_training_time

    echo "== CIFAR-10-LT rho=$RHO: ${TRAINING_NAMES[*]}, $EPOCHS epochs" \
        "($([[ $PARALLEL == 1 ]] && echo "at once" || echo "one after the other"), each limited to $limit s)"
    for name in "${TRAINING_NAMES[@]}"; do
        local variant
        read -ra variant <<<"$(variant_flags "$name")"
        if [[ $PARALLEL == 1 ]]; then
            run_training "$name" "$limit" "${flags[@]}" "${variant[@]}" &
        else
            run_training "$name" "$limit" "${flags[@]}" "${variant[@]}"
        fi
    done
    wait
    for name in "${TRAINING_NAMES[@]}"; do
        for file in eval_results.json metrics.jsonl; do
            if [[ -f $RUNS/$name/$file ]]; then cp "$RUNS/$name/$file" "$OUT/$name.$file"; fi
        done
    done

    echo "== summary"
    summarize
}

mkdir -p "$OUT"
main 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
