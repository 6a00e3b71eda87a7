#!/usr/bin/env bash
# Prepare a lent GPU machine's run (see benchmarks/gpu.sh), here, before asking for the machine:
# the device machine cannot reach the internet and its image lacks some of robench's
# dependencies, so their wheels (for its Python 3.12, x86-64) and the gzipped MNIST files travel
# in .gpu/, a folder git ignores (added to .git/info/exclude). About 25 MB in all.
#   bash benchmarks/gpu_prepare.sh [DATA_DIR]     (DATA_DIR: holds MNIST/raw/, default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-${ROBENCH_DATA_DIR:-../shared/data}}"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> "$(git rev-parse --git-path info/exclude)"
rm -rf .gpu && mkdir -p .gpu/whl .gpu/data/MNIST/raw
# what the device image lacks (its package list: the device tool's KINDS.md); pure-Python
# wheels except pydantic-core
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl "pydantic>=2.5,<3" "pydantic-core" "annotated-types" "typing-inspection" \
    "torchattacks>=3.5" "adversarial-robustness-toolbox>=1.17" "platformdirs>=3"
# one pydantic-core: the one this pydantic pins
python - <<'PY'
import pathlib, re, zipfile
whl = pathlib.Path(".gpu/whl")
pyd = next(whl.glob("pydantic-2*.whl"))
meta = zipfile.ZipFile(pyd).read(next(n for n in zipfile.ZipFile(pyd).namelist() if n.endswith("METADATA"))).decode()
pin = re.search(r"pydantic-core==([\w.]+)", meta).group(1)
for core in whl.glob("pydantic_core-*.whl"):
    if f"-{pin}-" not in core.name:
        core.unlink()
PY
if ! ls .gpu/whl/pydantic_core-*.whl >/dev/null 2>&1; then
    pin=$(unzip -p .gpu/whl/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==\([^ ;]*\).*/\1/p')
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 -d .gpu/whl "pydantic-core==$pin"
fi
for f in "$data"/MNIST/raw/*-ubyte; do gzip -c "$f" > ".gpu/data/MNIST/raw/$(basename "$f").gz"; done
du -sh .gpu
echo "ready: run benchmarks/gpu.sh on the device with carry ['.gpu']"
