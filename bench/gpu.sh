#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one go (about 9-10 minutes on an H200, estimated
# from its parts: all but bench.trainer_speed and the loss-aware run ran there in about 5 minutes):
#
#   bash bench/gpu.sh [DOC]        # DOC: where the dated sections go (default docs/benchmarks.md)
#
# PEAK_TFLOPS (default 989, dense bf16 of an H100 / H200 SXM) sets the MFU column; STEP_LIMIT_S
# (default 300) stops any one step that runs longer, so that a time-limited machine still returns
# the rest. Each step prints its table; the tests come first, since a loop that waits for the GPU
# would make every timing after it meaningless.
set -u -o pipefail
cd "$(dirname "$0")/.."
doc=${1:-docs/benchmarks.md}
peak=${PEAK_TFLOPS:-989}
limit=${STEP_LIMIT_S:-300}
export PYTHONUNBUFFERED=1
python=${PYTHON:-python}
start=$(date +%s)
failed=0

step() {
    echo "=== $1 (+$(($(date +%s) - start)) s)"
    shift
    timeout "$limit" "$@" || { echo "--- failed or stopped: $*"; failed=1; }
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || exit 1
step "no host-device sync in the loops" \
    "$python" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py
step "U-Net training step, ours vs diffusers" \
    "$python" -m bench.train_step --device cuda --peak-tflops "$peak" --precision fp32 bf16 --doc "$doc"
step "the gpu budget's whole training step under several settings" \
    "$python" -m bench.trainer_speed --device cuda --budget gpu --doc "$doc"
step "time to sharp digits at the gpu budget" \
    "$python" -m bench.time_to_quality --device cuda --only digits --budget gpu \
    --digits-eval-every 1000 --doc "$doc"
# The cpu budget's recipe (Min-SNR gamma = 1 with loss-aware t: the sampler's gain came with that
# weighting) on the gpu budget; capped at 6,000 steps to end within STEP_LIMIT_S (the learning rate
# then decays over 6,000 steps, not 10,000; loss-aware t also reads the losses every step).
step "the gpu budget with the cpu budget's Min-SNR gamma 1 and loss-aware t" \
    "$python" -m bench.time_to_quality --device cuda --only digits --budget gpu \
    --digits-eval-every 1000 --digits-max-steps 6000 \
    --set min_snr_gamma=1 --set t_sampling=loss-aware --doc "$doc"
step "sampling, ours vs diffusers" \
    "$python" -m bench.sampling --device cuda --peak-tflops "$peak" --doc "$doc"
echo "=== done (+$(($(date +%s) - start)) s)"
exit $failed
