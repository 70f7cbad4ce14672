#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run: the CUDA tests, the efficiency and oracle-memory benchmarks at a
# real 7B shape, VisionZip's tower scoring at SigLIP-so400m's, and the demo table on the GPU (bf16). Each step's
# output goes to OUT_DIR/<step>.txt, the benchmarks' JSON beside it; OUT_DIR/gpu_checks.tgz holds everything so
# far after every step.
#   bash tests/gpu_checks.sh OUT_DIR [SECONDS]     (SECONDS: the whole run's budget, default 570)
# ONLY="cuda_tests demo_cuda" runs just the steps named.
set -u
out=${1:?usage: bash tests/gpu_checks.sh OUT_DIR [SECONDS]}
budget=${2:-570}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$SECONDS

step() {  # step NAME MAX_SECONDS COMMAND...: runs under the smaller of MAX_SECONDS and the time left
  local name=$1 limit=$2
  shift 2
  if [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]]; then
    return
  fi
  local left=$((budget - (SECONDS - start) - 15))
  ((left < limit)) && limit=$left
  if ((limit < 20)); then
    echo "== $name: skipped, ${left}s left"
    return
  fi
  echo "== $name (at most ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  echo "   exit $? after $((SECONDS - t0))s"
  tail -n "${TAIL:-30}" "$out/$name.txt"
  tar czf "$out.tgz.tmp" -C "$out" --exclude gpu_checks.tgz . && mv "$out.tgz.tmp" "$out/gpu_checks.tgz"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
  nproc
  uptime
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

step cuda_tests 200 python3 -m pytest -q tests/test_cuda.py -p no:cacheprovider -ra
step bench_qwen2-7b 130 python3 -m tcc_eval.bench --shape qwen2-7b --visual 6000 --text 100 --ratios 0.5,0.25 \
  --repeats 5 --pdrop-layers 2/14/21 --json "$out/bench_qwen2-7b_cuda_6000v.json"
step bench_vila1.5-8b 95 python3 -m tcc_eval.bench --shape vila1.5-8b --visual 3136 --text 100 --ratios 0.5,0.25 \
  --repeats 5 --pdrop-layers 2/16/24 --json "$out/bench_vila1.5-8b_cuda_3136v.json"
step oracle_qwen2-7b_3000 90 python3 -m tcc_eval.bench_oracle --shape qwen2-7b --tokens 3000 --answer 2 \
  --json "$out/oracle_memory_qwen2-7b_cuda_3000.json"
step oracle_qwen2-7b_6000 60 python3 -m tcc_eval.bench_oracle --shape qwen2-7b --tokens 6000 --answer 2 \
  --variants layerwise --json "$out/oracle_memory_qwen2-7b_cuda_6000_layerwise.json"
step tower_siglip 40 python3 -m tcc_eval.bench_tower --tower siglip-so400m --images 10 --repeats 5 \
  --json "$out/visionzip_tower_siglip-so400m_cuda_10img.json"
TAIL=60 step demo_cuda 240 python3 -m tcc_eval.demo evaluate --seed 1 --n 200 --device cuda \
  --methods none random a0 tcc fastv divprune dart --json "$out/demo_cuda_seed1.json"
echo "done in $((SECONDS - start))s"
