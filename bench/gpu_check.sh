#!/usr/bin/env bash
# The one-shot GPU job (../shared/gpu/README.md): the card and versions, the GPU tests, and
# smoke runs of the GPU paths, each result a file in RESULTS_DIR. Benchmarks (issue 6) will be
# added after these checks. Keep the whole job well under 8 minutes on an H100.
#
# Prepare on the workstation (the GPU machine has no package index and lacks these):
#   ../shared/gpu/wheels.sh webdataset==1.0.2 braceexpand==0.1.7 torchmetrics==1.9.0 \
#     lightning-utilities==0.15.3 pytest==9.0.1 pluggy==1.6.0 iniconfig==2.3.0
# then run with the device tool: carry [".whl"], command `bash bench/gpu_check.sh $OUT`.
set -uo pipefail
OUT=${1:?usage: bench/gpu_check.sh RESULTS_DIR}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=${PYTHONPATH:-}:$PWD
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
step() { echo "[gpu_check $(date +%T)] $*"; }

step "card and versions -> env.log"
{ nvidia-smi; date -u; git log -1 --oneline 2>/dev/null
  $PY - <<'PYEOF'
import importlib
for name in ("torch", "triton", "diffusers", "transformers", "torchvision", "timm", "torchmetrics", "webdataset"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # noqa: BLE001 - a missing one is itself a finding
        print(name, "MISSING", type(e).__name__, e)
import torch
print("cuda", torch.version.cuda, "devices", torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
PYEOF
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

step "pytest -m gpu -> pytest-gpu.log (issue 4: CUDA training with bf16 autocast and channels_last)"
timeout 300 $PY -m pytest -q -m gpu -rs tests > "$OUT/pytest-gpu.log" 2>&1
echo "exit $?" >> "$OUT/pytest-gpu.log"
tail -5 "$OUT/pytest-gpu.log"

step "generate --devices all on the embedded model, then verify -> devices-smoke.json (issue 5)"
rm -rf /tmp/gpu-smoke
timeout 180 $PY -m t2i_engine.cli generate --out /tmp/gpu-smoke --model digits --images-per-class 200 \
  --images-per-shard 100 --devices all --no-progress --json > "$OUT/devices-smoke.json" 2> "$OUT/devices-smoke.log"
echo "generate exit $?" >> "$OUT/devices-smoke.log"
timeout 60 $PY -m t2i_engine.cli verify /tmp/gpu-smoke >> "$OUT/devices-smoke.log" 2>&1
echo "verify exit $?" >> "$OUT/devices-smoke.log"
tail -3 "$OUT/devices-smoke.log"
step "done; files in $OUT:"
ls -la "$OUT"
