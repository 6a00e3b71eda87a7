#!/usr/bin/env bash
# The flagship with 3 seeds and the seed claim with 10 on a lent GPU, timed, with the GPU's
# memory sampled, and the results folders copied back as tarballs.
#
# On the device machine (the `device` tool's run; prepare .gpu/ here first with
# benchmarks/gpu_prepare.sh, then carry ['.gpu']):
#   bash benchmarks/gpu.sh            # fgsm_lenet seeds 0,1,2, then seed_claim seeds 0-9
#   bash benchmarks/gpu.sh --tiny     # the same steps on suites/smoke.yaml (untrained, 50 images), CPU
# Writes to $OUT (or ./gpu-out): gpu.csv (suite, seeds, device, wall seconds, peak GPU MiB,
# exit code), gpu.log, and <suite>.tgz of each results folder.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-out}"; mkdir -p "$out"
tiny=0; [[ "${1:-}" == "--tiny" ]] && tiny=1
log="$out/gpu.log"; : > "$log"

if [[ -d .gpu/whl ]] && ! python3 -c "import robench" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/whl/*.whl >> "$log" 2>&1 || { echo "wheel install failed"; exit 3; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    python3 -m pip install -q --no-deps --no-build-isolation -e . >> "$log" 2>&1 \
        || { echo "robench install failed (see gpu.log)"; exit 3; }
fi
if [[ -d .gpu/data ]]; then
    mkdir -p /tmp/data/MNIST/raw
    for f in .gpu/data/MNIST/raw/*.gz; do gunzip -c "$f" > "/tmp/data/MNIST/raw/$(basename "$f" .gz)"; done
    export ROBENCH_DATA_DIR=/tmp/data
fi
export ROBENCH_CACHE_DIR="$(mktemp -d)"     # cold: every model trained in this run
export PYTHONUNBUFFERED=1

peak_file="$out/.peak"
sample_gpu() {  # peak memory.used (MiB) over the run, sampled every second
    local peak=0 v
    while :; do
        v=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
        [[ "$v" =~ ^[0-9]+$ ]] && (( v > peak )) && peak=$v && echo "$peak" > "$peak_file"
        sleep 1
    done
}

echo "suite,seeds,device,wall_s,peak_gpu_mib,rc" > "$out/gpu.csv"
run_suite() {  # suite yaml, seeds, device, extra args...
    local suite=$1 seeds=$2 device=$3; shift 3
    local name; name=$(basename "$suite" .yaml)
    local dest="/tmp/gpu-results/$name"; rm -rf "$dest"
    echo 0 > "$peak_file"; sample_gpu & local sampler=$!
    local t0; t0=$(date +%s.%N)
    python3 -m robench.cli run "$suite" --seeds "$seeds" --device "$device" --out "$dest" -q "$@" >> "$log" 2>&1
    local rc=$?
    local t1; t1=$(date +%s.%N)
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    local dev; dev=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    [[ -z "$dev" || "$device" == cpu ]] && dev="cpu ($(nproc) cores)"
    printf '%s,"%s",%s,%.1f,%s,%s\n' "$name" "$seeds" "$dev" "$(echo "$t1 - $t0" | bc)" \
        "$(cat "$peak_file")" "$rc" >> "$out/gpu.csv"
    [[ -d "$dest" ]] && tar czf "$out/$name.tgz" -C /tmp/gpu-results "$name"
    echo "$name seeds $seeds: rc $rc"
}

if (( tiny )); then
    run_suite suites/smoke.yaml 0,1 cpu --eval-limit 50 --epochs 0
else
    run_suite suites/fgsm_lenet.yaml 0,1,2 cuda
    run_suite suites/seed_claim.yaml 0,1,2,3,4,5,6,7,8,9 cuda
fi
rm -f "$peak_file"
cat "$out/gpu.csv"
