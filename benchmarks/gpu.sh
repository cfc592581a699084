#!/usr/bin/env bash
# One command for a GPU machine (about 8 minutes of wall time in all):
#
#   1. benchmarks/meta_step.py on CUDA: SmallCNN (B=128), ResNet-29 (B=64) and WRN-28-10
#      (benchmarks/wrn.py, B=100); plain, iegkit L2R (eager and with the compiled tangent pass),
#      double backward, and plain / iegkit L2R under bf16 autocast; interleaved, one process per
#      model; the same-weights check included (it compares the compiled pass with the others on
#      this torch/CUDA).
#   2. benchmarks/recipe_steps.py on CUDA (plain, L2R, EG, IEG), SmallCNN, B = 128. The script has
#      no --device option; a small wrapper here builds its models and batches on the GPU and
#      synchronises CUDA around each step's timer.
#   3. A short noisy CIFAR-10 run, plain vs robust_ieg, the recommended robust_ieg_glc (robust IEG's
#      label posterior through GLC's C_hat from the plain run) and the two strongest baselines of
#      benchmarks/baselines.py, plain+ (its selected MixUp weight 5; the best baseline at uniform 0.4
#      and asymmetric 0.4) and L2R (the best at uniform 0.8), at uniform 0.8 (benchmarks/noisy_cifar10.py
#      --config cpu10k --device cuda, fewer epochs), then its table. With --cifar-full, the issue's
#      GPU configuration: WRN-28-2 on all 44,900 noisy training images (the 5,000-image validation
#      split and the 100 trusted images set apart), as many epochs as fit in --cifar-seconds
#      (default 400; both runs together, the strong views included): a timing stage measures the
#      steps on the GPU first and sets the epochs (--cifar-epochs N instead fixes them).
#      --only-cifar skips stages 1-2 so that the budget goes to it.
#
# Every table goes to $OUT (the device tool's output folder) or ./runs/gpu (--out DIR):
# results.md (one section per stage), status.txt (each stage: ok, failed, stopped, skipped),
# env.txt, logs/ (one log per stage) and cifar/ (the CIFAR run store and figures). --pack (the
# default when $OUT is set, whose tool brings back at most 8 files) packs logs/ and cifar/ into
# details.tar.gz. Each stage runs under a time limit taken from what is left of --budget (440 s),
# so a slow stage cannot take the rest with it; a stage that fails or runs out of time is
# reported and the script goes on. --tangents adds, after the rest (up to 120 s more),
# meta_step.py --compare-tangents on the GPU: the compiled tangent pass against eager and float64.
#
# What the GPU machine needs (it installs nothing from the network):
#   * torch with CUDA (python3 there has it); iegkit comes from this tree (PYTHONPATH=.);
#   * kornia, for the CIFAR run's augmentations: carried as wheels, installed here with
#     pip --no-index --no-deps into /tmp (--wheels DIR, default ./.whl, else ./runs/wheels, both
#     git-ignored or to be). Made on a machine with network access (7 MB):
#       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_17_x86_64 -d runs/wheels \
#         kornia==0.9.0 kornia_rs==0.2.0
#     Without kornia the CIFAR stage is skipped (stages 1-2 do not need it);
#   * the CIFAR-10 JPEG archives (train.tar.gz, test.tar.gz) in an ignored folder of the tree, e.g.
#     ./data/cifar10-jpeg (--data DIR; default: the first of ./data/cifar10-jpeg,
#     ./runs/cifar10-jpeg, ../shared/data/cifar10-jpeg that holds them).
#
# Usage (repository root):
#   bash benchmarks/gpu.sh                      # on the GPU machine
#   (device tool: carry ["runs/wheels", "runs/cifar10-jpeg"], command "bash benchmarks/gpu.sh")
#   bash benchmarks/gpu.sh --dry-run            # tiny sizes on the CPU, < 60 s (tests/test_gpu_script.py)
#   bash benchmarks/gpu.sh --out DIR --data DIR --wheels DIR --budget SECONDS --cifar-epochs N \
#       --pack --tangents
#   bash benchmarks/gpu.sh --only-cifar --cifar-full --budget 560   # the issue's GPU configuration
#   environment: PYTHON (the interpreter), GPU_SH_NO_COMPILE=1 (skip the compiled variant)

set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

DRY_RUN=0
OUT_DIR="${OUT:-}"
PACK=0; [ -n "${OUT:-}" ] && PACK=1
TANGENTS=0
DATA=""
WHEELS=""
BUDGET=440
CIFAR_EPOCHS=4
CIFAR_EPOCHS_SET=0
CIFAR_FULL=0
CIFAR_SECONDS=400
ONLY_CIFAR=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT_DIR="$2"; shift ;;
        --data) DATA="$2"; shift ;;
        --wheels) WHEELS="$2"; shift ;;
        --budget) BUDGET="$2"; shift ;;
        --cifar-epochs) CIFAR_EPOCHS="$2"; CIFAR_EPOCHS_SET=1; shift ;;
        --cifar-full) CIFAR_FULL=1 ;;
        --cifar-seconds) CIFAR_SECONDS="$2"; shift ;;
        --only-cifar) ONLY_CIFAR=1 ;;
        --pack) PACK=1 ;;
        --tangents) TANGENTS=1 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$OUT_DIR" ]; then
    if [ "$DRY_RUN" = 1 ]; then OUT_DIR="$REPO/runs/gpu-dry"; else OUT_DIR="$REPO/runs/gpu"; fi
fi
mkdir -p "$OUT_DIR/logs" "$OUT_DIR/cifar"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
RESULTS="$OUT_DIR/results.md"
rm -f "$RESULTS" "$OUT_DIR/status.txt" "$OUT_DIR/details.tar.gz" "$OUT_DIR"/logs/*.log

# The interpreter: $PYTHON, else the project's venv where it has torch, else python3.
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -c "import torch" 2>/dev/null; then
        PYTHON="$REPO/.venv/bin/python"
    else
        PYTHON=python3
    fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

START=$(date +%s)
STATUS=()
log() { echo "[gpu.sh $(( $(date +%s) - START ))s] $*"; }

# run_stage NAME CAP_SECONDS COMMAND...: run under min(CAP, what is left of the budget), log to
# $OUT_DIR/logs/NAME.log (and the terminal), record the outcome.
run_stage() {
    local name="$1" cap="$2"; shift 2
    local left=$(( START + BUDGET - $(date +%s) ))
    local limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 10 ]; then
        log "$name: skipped (budget of ${BUDGET}s spent)"
        STATUS+=("$name: skipped, no time left")
        return
    fi
    log "$name: up to ${limit}s: $*"
    local t0=$(date +%s)
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > >(tee "$OUT_DIR/logs/$name.log") 2>&1
    local rc=$?
    local took=$(( $(date +%s) - t0 ))
    case "$rc" in
        0) STATUS+=("$name: ok (${took}s)") ;;
        124|137) STATUS+=("$name: stopped at its ${limit}s limit (partial log: logs/$name.log)") ;;
        *) STATUS+=("$name: failed, exit $rc (${took}s; see logs/$name.log)") ;;
    esac
    log "$name: exit $rc after ${took}s"
}

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "dry run: $DRY_RUN"
    echo "python: $PYTHON"
    "$PYTHON" -c "import sys, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''); print('python', sys.version.split()[0])" 2>&1
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    echo "cpus: $(nproc 2>/dev/null)"
} > "$OUT_DIR/env.txt"
cat "$OUT_DIR/env.txt"

if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    export OMP_NUM_THREADS=1
else
    DEVICE=cuda
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu.sh: CUDA is not available to $PYTHON (use --dry-run on a CPU machine)" >&2
        exit 2
    fi
fi

# kornia (the CIFAR stage's augmentations): from carried wheels when it is not importable.
if [ -z "$WHEELS" ]; then
    WHEELS="$REPO/.whl"
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || WHEELS="$REPO/runs/wheels"
fi
if ! "$PYTHON" -c "import kornia" 2>/dev/null; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        log "installing the carried wheels in $WHEELS into /tmp/iegkit-site (no index, no deps)"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/iegkit-site "$WHEELS"/*.whl && export PYTHONPATH="/tmp/iegkit-site:$PYTHONPATH"
    fi
fi
HAVE_KORNIA=0
"$PYTHON" -c "import kornia" 2>/dev/null && HAVE_KORNIA=1

if [ "$ONLY_CIFAR" = 1 ]; then
    log "meta_step, recipe_steps: skipped (--only-cifar)"
    STATUS+=("meta_step, recipe_steps: skipped (--only-cifar)")
else
# ------------------------------------------------------------------ 1. meta_step.py
VARIANTS="plain,iegkit_l2r,iegkit_l2r_compiled,double_backward,plain_bf16,iegkit_l2r_bf16"
if [ "${GPU_SH_NO_COMPILE:-0}" = 1 ] || [ "$DRY_RUN" = 1 ]; then
    # the dry run leaves out compiling (minutes on a CPU; tests/test_compile.py covers it)
    VARIANTS="plain,iegkit_l2r,double_backward,plain_bf16,iegkit_l2r_bf16"
fi
meta_step() {  # meta_step STAGE MODELS BATCH_SIZES REPEATS PROBE
    run_stage "$1" "$6" "$PYTHON" -m benchmarks.meta_step --devices "$DEVICE" --threads 1 \
        --models "$2" --batch-sizes "$3" --repeats "$4" --cpu-repeats "$4" --probe-batch "$5" \
        --variants "$VARIANTS" --write "$RESULTS" --section "meta_step.py on $DEVICE: $2"
}
if [ "$DRY_RUN" = 1 ]; then
    meta_step meta_step small_cnn 8 1 8 40
else  # one process per model, so a stage stopped at its limit loses one table only
    meta_step meta_step_small_cnn small_cnn 128 15 100 60
    meta_step meta_step_resnet29 resnet29 64 15 100 100
    meta_step meta_step_wrn28_10 wrn28_10 100 10 100 110
fi

# ------------------------------------------------------------------ 2. recipe_steps.py
RECIPE_ARGS=(--model small_cnn --batch-size 128 --repeats 10)
[ "$DRY_RUN" = 1 ] && RECIPE_ARGS=(--model small_cnn --batch-size 8 --repeats 1 --threads 1)
run_stage recipe_steps 60 "$PYTHON" - "$DEVICE" "$RESULTS" "${RECIPE_ARGS[@]}" <<'EOF'
"""benchmarks/recipe_steps.py on a given device: its models and batches built there, CUDA
synchronised before each reading of the step timer; its section written under a heading that
names the device."""
import re, sys, tempfile, time, types
from pathlib import Path

import torch

device, results, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
from benchmarks import recipe_steps  # the repository root is on PYTHONPATH
from benchmarks.results_io import write_section

if device != "cpu":
    torch.backends.cudnn.benchmark = True
    on = lambda make: (lambda *a, **k: make(*a, **k).to(device))  # noqa: E731
    proxy = types.ModuleType("torch")
    proxy.__getattr__ = lambda name: getattr(torch, name)
    proxy.randn, proxy.randint = on(torch.randn), on(torch.randint)
    recipe_steps.torch = proxy
    recipe_steps.SmallCNN, recipe_steps.ResNet29 = on(recipe_steps.SmallCNN), on(recipe_steps.ResNet29)
    def synced():
        torch.cuda.synchronize()
        return time.perf_counter()
    recipe_steps.time = types.SimpleNamespace(perf_counter=synced, process_time=time.process_time)
with tempfile.TemporaryDirectory() as tmp:
    written = Path(tmp) / "r.md"
    sys.argv = ["benchmarks/recipe_steps.py", *argv, "--write", str(written)]
    code = recipe_steps.main()
    text = written.read_text()
match = re.search(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.S | re.M)
write_section(results, f"{match.group(1)} on {device}", f"Run through benchmarks/gpu.sh on {device}.\n\n"
              + match.group(2))
sys.exit(code)
EOF

fi  # --only-cifar

# ------------------------------------------------------------------ 3. noisy CIFAR-10
if [ -z "$DATA" ]; then
    for candidate in "$REPO/data/cifar10-jpeg" "$REPO/runs/cifar10-jpeg" "$REPO/../shared/data/cifar10-jpeg"; do
        if [ -f "$candidate/train.tar.gz" ] && [ -f "$candidate/test.tar.gz" ]; then DATA="$candidate"; break; fi
    done
fi
if [ "$HAVE_KORNIA" != 1 ]; then
    log "cifar10: skipped: kornia is not importable and no wheels in $WHEELS"
    STATUS+=("cifar10: skipped, no kornia (carry its wheels: --wheels)")
elif [ -z "$DATA" ] || [ ! -f "$DATA/train.tar.gz" ]; then
    log "cifar10: skipped: no CIFAR-10 JPEG archives (--data DIR with train.tar.gz and test.tar.gz)"
    STATUS+=("cifar10: skipped, no data")
else
    STORE="$OUT_DIR/cifar/cifar10.jsonl"
    rm -f "$STORE"
    CIFAR=(-m benchmarks.noisy_cifar10 --config cpu10k --data "$DATA" --store "$STORE"
           --methods plain,l2r,robust_ieg --variants plain_plus/mixup_weight=5,robust_ieg_glc --settings uniform:0.8 --seeds 1
           --no-progress)
    if [ "$CIFAR_FULL" = 1 ]; then
        CIFAR+=(--model wrn28_2 --train-subset 0)
    fi
    if [ "$DRY_RUN" = 1 ]; then
        CIFAR+=(--dry-run --threads 1)
    else
        CIFAR+=(--device cuda --threads 0 --cache-dir "$REPO/runs/cifar10-cache")
    fi
    if [ "$CIFAR_FULL" = 1 ] && [ "$CIFAR_EPOCHS_SET" = 0 ]; then
        # the epochs that fit: measured steps, evaluation and strong views of this configuration
        run_stage cifar10_timing 150 "$PYTHON" "${CIFAR[@]}" --time-steps "$([ "$DRY_RUN" = 1 ] && echo 2 || echo 10)"
        # never more than the budget has left, less 60 s for loading the data and the report
        LEFT=$(( START + BUDGET - $(date +%s) - 60 ))
        [ "$LEFT" -lt "$CIFAR_SECONDS" ] && CIFAR_SECONDS=$(( LEFT > 10 ? LEFT : 10 ))
        PER_EPOCH=""
        [ -f "$OUT_DIR/logs/cifar10_timing.log" ] && \
            PER_EPOCH=$(sed -n 's/^seconds per epoch of every run: //p' "$OUT_DIR/logs/cifar10_timing.log" | tail -n 1)
        if FIT=$("$PYTHON" -c "import math, sys; print(max(1, math.floor(float(sys.argv[1]) / float(sys.argv[2]))))" \
                 "$CIFAR_SECONDS" "$PER_EPOCH" 2>/dev/null); then
            CIFAR_EPOCHS="$FIT"
            log "cifar10: $CIFAR_EPOCHS epochs fit in ${CIFAR_SECONDS}s (${PER_EPOCH}s per epoch of both runs)"
        else
            log "cifar10: no timing (see logs/cifar10_timing.log); falling back to --cifar-epochs $CIFAR_EPOCHS"
            STATUS+=("cifar10: epochs not measured, $CIFAR_EPOCHS used")
        fi
    fi
    CIFAR+=(--epochs "$CIFAR_EPOCHS")  # (--dry-run replaces it with 1)
    run_stage cifar10 100000 "$PYTHON" "${CIFAR[@]}"
    # the table of whatever finished (a few seconds; also after a timeout, past the budget)
    BUDGET=$(( BUDGET + 30 ))
    run_stage cifar10_report 30 "$PYTHON" "${CIFAR[@]}" --report-only --write "$RESULTS" \
        --figures-dir "$OUT_DIR/cifar"
fi

# ------------------------------------------------------------------ 4. (--tangents) float64 check
if [ "$TANGENTS" = 1 ]; then
    BUDGET=$(( $(date +%s) - START + 120 ))
    if [ "$DRY_RUN" = 1 ]; then
        TANGENT_ARGS=(--models small_cnn --batch-sizes 8 --probe-batch 8 --repeats 1)
    else
        TANGENT_ARGS=(--models small_cnn,resnet29 --batch-sizes small_cnn:128,resnet29:64 --repeats 10)
    fi
    run_stage tangents 120 "$PYTHON" -m benchmarks.meta_step --compare-tangents --devices "$DEVICE" \
        --threads 1 "${TANGENT_ARGS[@]}" --write "$RESULTS"
fi

log "done in $(( $(date +%s) - START ))s; tables in $RESULTS"
printf '%s\n' "${STATUS[@]}" | tee "$OUT_DIR/status.txt"
if [ "$PACK" = 1 ]; then
    tar -czf "$OUT_DIR/details.tar.gz" -C "$OUT_DIR" logs cifar && rm -rf "$OUT_DIR/logs" "$OUT_DIR/cifar"
    log "packed logs/ and cifar/ into $OUT_DIR/details.tar.gz"
fi
failed=0
for s in "${STATUS[@]}"; do case "$s" in *failed*) failed=1 ;; esac; done
exit "$failed"
