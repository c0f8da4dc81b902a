#!/usr/bin/env bash
# The GPU check: on one CUDA GPU, in under 8 minutes, run what CPU machines never reach (CUDA, bf16, xformers) and
# measure speed and memory there. Every log and figure goes under one folder, summary.txt last.
#
#   bash benchmarks/gpu_check.sh [FOLDER]      # default: $OUT when set, else ./gpu-check; new or empty
#
# Stages, each under its own time limit so that one failure cannot eat the budget (7 min 20 s in all):
#   env       GPU, driver, torch, xformers and packages                                   env.log
#   tests     the tests selected for CUDA / bf16 / xformers / half precision               tests.log, tests.xml
#   generate  the shipped pipeline in fp32 and bf16, with SDPA and (when installed)         generate.log, generate/
#             xformers attention, then `ldlm generate --device cuda`
#   train     300 DiT steps under train.precision=bf16-mixed on E2E (the built-in corpus    train.log, train-dit/
#             when ../shared/data is not there); logs kept, weights not
#   speed     benchmarks/speed.py --device cuda                                            speed.log/.json/.png
#   memory    benchmarks/memory.py --device cuda --quick                                   memory.log/.json/.png
# Exit status: 0 when every stage passed, 1 when one failed or ran out of time, 2 when none ran (no GPU, bad folder).
set -uo pipefail

out=$(realpath -m "${1:-${OUT:-gpu-check}}")
cd "$(dirname "$0")/.." || exit 2
if [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    echo "gpu_check: $out is not empty; give a new or empty folder" >&2
    exit 2
fi
python - <<'PY' || exit 2
import sys

try:
    import torch
except ImportError:
    sys.exit("gpu_check: torch is not importable; install ldlm first (see README)")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: no CUDA GPU: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees none; "
             "run this on a GPU machine")
PY
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0

stage() {  # stage NAME LIMIT_S COMMAND...: run COMMAND under `timeout` into NAME.log; one line of summary.txt
    local name=$1 limit=$2 start=$SECONDS rc status
    shift 2
    echo "== $name (at most $limit s)"
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out" ;;
        *) status="failed (exit $rc)" ;;
    esac
    [ "$status" = ok ] || failed=1
    printf '%-9s %-17s %4d s  %s\n' "$name" "$status" $((SECONDS - start)) "$name.log" | tee -a "$out/summary.txt"
}

ENV_PY=$(cat <<'PY'
import shutil, subprocess, sys

import torch

from ldlm.dit.model import _xformers_attention

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA build {torch.version.cuda}")
print(f"GPU {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
print(f"DiT attention on CUDA: {'xformers' if _xformers_attention() else 'SDPA (xformers not installed)'}")
for command in (["nvidia-smi"], ["git", "rev-parse", "HEAD"], [sys.executable, "-m", "pip", "freeze"]):
    if shutil.which(command[0]):
        print(f"$ {' '.join(command)}\n" + subprocess.run(command, capture_output=True, text=True).stdout, flush=True)
PY
)

# the DiT's attention is the function dit.model._xformers_attention returns (xformers' on CUDA when installed, else
# None: SDPA); replacing it chooses one
GENERATE_PY=$(cat <<'PY'
import json, sys, time
from pathlib import Path

import torch

import ldlm.dit.model as dit_model
from ldlm.cli import main as ldlm_cli
from ldlm.pipelines.loading import load_pipeline

out = Path(sys.argv[1])
out.mkdir()
xformers = dit_model._xformers_attention
attentions = ["sdpa", "xformers"] if xformers() is not None else ["sdpa"]
results, reference = {}, None
for attention in attentions:
    dit_model._xformers_attention = xformers if attention == "xformers" else lambda: None
    for dtype in ("fp32", "bf16"):
        pipe = load_pipeline().to("cuda", {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])

        def call():
            return pipe(batch_size=16, num_inference_steps=25, generator=torch.Generator("cuda").manual_seed(0))

        call()  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = call()
        torch.cuda.synchronize()
        seconds, texts = time.perf_counter() - start, result.texts
        reference = reference or texts
        name = f"{dtype}-{attention}"
        results[name] = {"seconds": seconds, "finite": bool(torch.isfinite(result.latents).all()),
                         "non_empty_texts": sum(bool(t.strip()) for t in texts),
                         "texts_as_fp32_sdpa": sum(a == b for a, b in zip(texts, reference)), "samples": len(texts)}
        (out / f"{name}.txt").write_text("\n".join(texts) + "\n")
        print(name, results[name], flush=True)
(out / "generate.json").write_text(json.dumps(results, indent=1))
bad = [name for name, r in results.items() if not (r["finite"] and r["non_empty_texts"])]
if bad:
    sys.exit(f"non-finite latents or only empty texts: {', '.join(bad)}")
sys.exit(ldlm_cli(["generate", "--device", "cuda", "--num-samples", "4", "--prompt", "The Eagle is a coffee shop"]))
PY
)

corpus="builtin:restaurants:8000"  # the tests' built-in corpus, when the E2E data is not reachable
for path in ../shared/data/e2e/train.jsonl shared/data/e2e/train.jsonl; do
    if [ -f "$path" ]; then corpus=$path; break; fi
done
ar=()
if [ -d runs/e2e-ar ]; then ar=(--ar runs/e2e-ar); fi

stage env 20 python -c "$ENV_PY"
stage tests 60 python -m pytest tests -p no:cacheprovider -rs --junitxml "$out/tests.xml" \
    -k "cuda or gpu or bf16 or xformers or half_precision"
stage generate 60 python -c "$GENERATE_PY" "$out/generate"
stage train 110 python -m ldlm.cli train-dit --config configs/e2e-dit.yaml "data.train=[{path: '$corpus'}]" \
    train.output_dir="$scratch/train-dit" train.accelerator=gpu train.precision=bf16-mixed train.max_steps=300 \
    train.max_minutes=1 train.val_every=100 train.checkpoint_every=300 sample.every=300 sample.num_samples=16 \
    train.progress_bar=false
mkdir -p "$out/train-dit"
cp -r "$scratch"/train-dit/{config.yaml,metrics.json,samples.jsonl,logs} "$out/train-dit/" 2>>"$out/train.log"
stage speed 100 python benchmarks/speed.py --device cuda --steps 10 25 --tokens 256 1024 --repeats 2 "${ar[@]}" \
    --out "$out/speed"
stage memory 90 python benchmarks/memory.py --device cuda --quick "${ar[@]}" --out "$out/memory"

echo "total     $((SECONDS / 60)) min $((SECONDS % 60)) s; train corpus $corpus" | tee -a "$out/summary.txt"
exit "$failed"
