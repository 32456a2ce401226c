#!/usr/bin/env bash
# The one-shot GPU job (../shared/gpu/README.md, ../shared/PERF.md), sized for a session's 15
# device minutes: two calls of the device tool, the second made at once while the machine is
# still warm; each stage under its own time limit and writing its JSON as it goes (bench's
# --out is rewritten after every baseline and configuration), so a timeout still brings data.
#
#   call 1 `main` (~420 s, timeout 520): env.log; bench-sd15.json: the SD1.5 ladder (512 px,
#       guidance 2.0) at 10 steps, batch 64: eager bf16, + channels_last + fused QKV, + compile,
#       beside diffusers bf16 at batch 64, then the headline A/B at 50 steps, 2 interleaved
#       rounds; digits-precision.json: the embedded model's bf16, FP8-Linear and FP8-conv sets
#       (same seeds), synth->real with 2 training seeds each, PSNR against bf16; ceilings.json
#       last (bf16/fp8 matmul and copy rates, CUDA events)
#   call 2 `families` (~300 s, timeout 340): bench-sdxl.json (1024 px, ladder at 10 steps; first:
#       never measured), bench-flux-schnell.json (1024 px, 4 steps: eager, regional compile + fused
#       QKV (its GPU default), + FP8; diffusers at 4 and 8). Every bench JSON holds MFU against the
#       matmul rate measured in it and against the card's published bf16 peak.
#   Measured 2026-12-04: the machine's start and the transfers took ~90 s of device time, so
#   the two calls fit 15 minutes only if no other call is made (a helper's test call is one).
#   `extra` if device time is left: checks.log (the switches' and the FP8 conv kernel's tests
#       compiled), conv.jsonl (bench/conv.py: FP8 conv against cuDNN bf16 on SD1.5's shapes),
#       attention.jsonl (bench/attention.py), attention-auto.json (its winners, written into the
#       engine's own table for this card and copied out: the table `--attention auto` reads), and
#       bench-sd15-auto.json (SD1.5 at 32 images a batch, the shapes bench/attention.py timed: eager
#       bf16 against `--attention auto` routed by that table, in one run); first of them (issues
#       33, 37) the few-step cell, bench-sd15-4steps-vae.json and -tiny.json: SD1.5 at 4 LCM steps
#       without CFG, batch 16, decoded by the VAE and by TAESD's architecture (random weights, as
#       the model's), stored at 64 px, diffusers beside each with the same decoder (its own
#       scheduler: the forwards per image are in the JSON): the decode's share of the time;
#       checks.log also runs FLUX's GPU defaults through generate (tests/export/test_speed.py)
#
# Prepare on the workstation (the GPU machine has no package index and lacks these):
#   ../shared/gpu/wheels.sh webdataset==1.0.2 braceexpand==0.1.7 torchmetrics==1.9.0 \
#     lightning-utilities==0.15.3 pytest==9.0.1 pluggy==1.6.0 iniconfig==2.3.0
# then: device run, carry [".whl"], command `bash bench/gpu_check.sh $OUT main`; copy the files
# out, then at once `bash bench/gpu_check.sh $OUT families`.
# Dry run on a CPU (tiny models, the same code paths, nothing timed that counts):
#   DRY=1 PYTHON=.venv/bin/python bash bench/gpu_check.sh /tmp/dry dry
set -uo pipefail
OUT=${1:?usage: bench/gpu_check.sh RESULTS_DIR [main|families|dry|STAGE,STAGE...]}
STEPS=${2:-main}
case $STEPS in
  main) STEPS=env,sd15,digits,ceilings ;;
  families) STEPS=sdxl,flux ;;
  extra) STEPS=decoders,gputests,attention,autorung ;;
  dry) STEPS=env,ceilings,sd15,digits,flux,sdxl,decoders,attention,autorung; DRY=1 ;;
esac
DRY=${DRY:-0}
want() { [[ ",$STEPS," == *",$1,"* ]]; }
mkdir -p "$OUT"
if [ "$DRY" = 0 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=${PYTHONPATH:-}:$PWD
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TORCHAO_FORCE_SKIP_LOADING_SO_FILES=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T2I="$PY -m t2i_engine.cli"
step() { echo "[gpu_check $(date +%T)] $*"; }
# run LIMIT LOG CMD...: one stage under its own limit, its output appended to LOG, its exit code after it
run() {
  local limit=$1 log=$2; shift 2
  step "$* (limit ${limit}s)"
  echo "=== $* ($(date +%T))" >> "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "exit $rc ($(date +%T))" >> "$log"
  tail -4 "$log"
}

if want env; then
  { nvidia-smi; date -u; git log -1 --oneline 2>/dev/null
    $PY - <<'PYEOF'
import importlib
for name in ("torch", "triton", "diffusers", "transformers", "torchao", "torchvision", "torchmetrics", "webdataset"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # noqa: BLE001 - a missing one is itself a finding
        print(name, "MISSING", type(e).__name__, e)
import torch
print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "devices", torch.cuda.device_count(),
      [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
PYEOF
  } >> "$OUT/env.log" 2>&1
  tail -12 "$OUT/env.log"
fi

if [ "$DRY" = 1 ]; then  # tiny models on the CPU: every stage's code runs, nothing is timed for real
  export TRITON_INTERPRET=1  # the Triton kernels (FP8 conv) through the interpreter
  want ceilings && run 120 "$OUT/bench.log" $PY bench/ceilings.py --dry-run --out "$OUT/ceilings.json"
  want sd15 && run 300 "$OUT/bench.log" $T2I bench tiny-sd --steps 2 --batch 2 --baseline diffusers \
    --baseline-batch 2,4 --warmup 1 --reps 2 --ladder base,channels_last+fuse_qkv,channels_last+fuse_qkv+compile \
    --ab 2 --ab-steps 3 --out "$OUT/bench-sd15.json"
  want digits && run 300 "$OUT/bench.log" $PY bench/digits_precision.py /tmp/gpu-check-digits \
    --precisions fp32,fp32+compile,fp32+fp8conv \
    --seeds 0 --images-per-class 2 --epochs 1 --device cpu --json "$OUT/digits-precision.json"
  want flux && run 300 "$OUT/bench.log" $T2I bench tiny-flux-schnell --batch 2 --baseline diffusers --baseline-batch 2 \
    --warmup 1 --reps 1 --ladder base,fuse_qkv+regional+compile --ab 1 --out "$OUT/bench-flux-schnell.json"
  want attention && run 200 "$OUT/attention.log" $PY bench/conv.py --dry-run --models sd15 --out "$OUT/conv.jsonl"
  want attention && run 200 "$OUT/attention.log" $PY bench/attention.py --dry-run --models sd15,flux-schnell \
    --out "$OUT/attention.jsonl" --table "$OUT/attention-auto.json"
  want decoders && run 200 "$OUT/bench.log" $T2I bench tiny-sd --steps 2 --guidance 0 --sampler lcm --batch 2 \
    --baseline diffusers --baseline-batch 2 --warmup 0 --reps 1 --decoder tiny --output-size 16 --out "$OUT/bench-sd15-4steps-tiny.json"
  want autorung && run 200 "$OUT/bench.log" $T2I bench tiny-sd --steps 2 --batch 2 --baseline none --warmup 1 \
    --reps 1 --ladder base,auto --out "$OUT/bench-sd15-auto.json"
  step "dry run done; files in $OUT:"; ls -la "$OUT"; exit 0
fi


# SD1.5, the paper protocol (512 px, guidance 2.0): the ladder at 10 steps, batch 64 (each rung:
# one warm-up and 2 timed batches; a compile rung's warm-up compiles), then the headline pair at
# 50 steps, interleaved. Each rung's images are compared with eager bf16's (PSNR). Measured on
# 2026-12-04: diffusers' batch 64 beats 32 (12.40 against 12.10 images/s at 10 steps) and a
# cuDNN-first rung ran as fast as eager with identical pixels, so neither is repeated here.
want sd15 && run 330 "$OUT/bench.log" $T2I bench sd15 --steps 10 --guidance 2.0 --batch 64 \
  --baseline diffusers --baseline-batch 64 --warmup 1 --reps 2 \
  --ladder base,channels_last+fuse_qkv,channels_last+fuse_qkv+compile \
  --ab 2 --ab-steps 50 --out "$OUT/bench-sd15.json"

# What FP8 costs as training data: the embedded digits model in bf16, with FP8 Linear layers, and
# with our FP8 convolutions (same seeds), the small CNN trained on each with 2 seeds, tested on real
# digits.
want digits && run 190 "$OUT/bench.log" $PY bench/digits_precision.py /tmp/gpu-check-digits \
  --precisions bf16,fp8,bf16+fp8conv \
  --seeds 0,1 --device cuda --json "$OUT/digits-precision.json"

# SDXL (1024 px; its ladder at 10 steps: no GPU run has measured it yet, so it comes first) and
# FLUX-schnell (1024 px, 4 steps; eager and regional compile measured on 2026-12-04, its FP8 rung
# not): their UNets / transformers compiled by region (each repeated block once; FLUX's took 50 s
# with its first batch). FLUX's second rung is its GPU default (export/speed.py).
want sdxl && run 110 "$OUT/bench.log" $T2I bench sdxl --steps 10 --guidance 5.0 --batch 8 --baseline diffusers \
  --baseline-batch 8 --warmup 1 --reps 2 --ladder base,channels_last+fuse_qkv+regional+compile \
  --out "$OUT/bench-sdxl.json"
want flux && run 220 "$OUT/bench.log" $T2I bench flux-schnell --batch 4 --baseline diffusers --baseline-batch 4,8 \
  --warmup 1 --reps 2 --ladder base,fuse_qkv+regional+compile,fuse_qkv+regional+compile+fp8 --ab 1 \
  --out "$OUT/bench-flux-schnell.json"

want ceilings && run 30 "$OUT/bench.log" $PY bench/ceilings.py --out "$OUT/ceilings.json"
# The few-step cell (issues 33, 37): SD1.5 at 4 LCM steps without CFG; what the decode costs in time
# there (FLOPs: 44% of a 4-step SD1.5 image with the VAE, 4% with TAESD), each path with the same
# decoder, the images stored at 64 px.
for dec in vae tiny; do
  want decoders && run 100 "$OUT/bench.log" $T2I bench sd15 --steps 4 --guidance 0 --sampler lcm --batch 16 \
    --baseline diffusers --baseline-batch 16 --warmup 1 --reps 3 --decoder $dec --output-size 64 --out "$OUT/bench-sd15-4steps-$dec.json"
done
want gputests && run 180 "$OUT/checks.log" $PY -m pytest -q -rsP tests/export/test_tuning.py tests/kernels/test_conv.py \
  tests/kernels/test_auto.py tests/export/test_speed.py
want attention && run 90 "$OUT/attention.log" $PY bench/conv.py --models sd15 --budget-s 75 --out "$OUT/conv.jsonl"
want attention && run 60 "$OUT/attention.log" $PY bench/attention.py --models sd15,flux-schnell --budget-s 45 \
  --out "$OUT/attention.jsonl"  # its winners go into the engine's auto attention table for this card
want attention && cp "$($PY -c 'import torch; from t2i_engine.kernels.auto import table_path
print(table_path(torch.device("cuda")))')" "$OUT/attention-auto.json"
# SD1.5's rung with auto (B 64 calls: the shapes just timed, so the table routes them untimed)
want autorung && run 150 "$OUT/bench.log" $T2I bench sd15 --steps 10 --guidance 2.0 --batch 32 --baseline none \
  --warmup 1 --reps 2 --ladder base,auto --out "$OUT/bench-sd15-auto.json"
step "done; files in $OUT:"
ls -la "$OUT"
