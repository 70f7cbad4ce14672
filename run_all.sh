#!/usr/bin/env bash
# Run the evaluation matrix through VLMEvalKit and lmms-eval, then build the paper-style tables.
#
#   bash run_all.sh                      # demo suite: offline demo models x methods x ratios on the
#                                        # synthetic image + video benchmarks (CPU: ~50 min on 2 cores)
#   bash run_all.sh --suite paper        # the paper's matrix on real checkpoints (GPUs, hub access)
#   options: --results DIR (default results/)  --frameworks vlmeval,lmms_eval (or none: set-up and checks only)
#            --n N (synthetic set size; a results folder keeps the size it was run with)
#            --methods TCC,VisionZip,... (the VLMEvalKit grid's method tokens, as in model names; default: the
#            suite's; lmms-eval keeps its own shorter list)
#            --bases Qwen25VL,Qwen2VL2B,... (paper suite: the checkpoints, as registry bases; default
#            Qwen2VL,LLaVAOV,VILA15, the paper's)
#            --dry-run (print the framework commands that would run, one per line, and run nothing)
#
# Resumable: a run whose score files already exist is skipped. Fails loudly when a run produced no results
# (lmms-eval exits 0 even when evaluation crashes, so its results file is checked explicitly).
set -euo pipefail
cd "$(dirname "$0")"

SUITE=demo
RESULTS=results
FRAMEWORKS=vlmeval,lmms_eval
N=""
METHODS_ARG=""
BASES_ARG=""
DRY_RUN=""
while [[ $# -gt 0 ]]; do
  case "$1" in  # an option that takes a value must have one (set -u would otherwise say "$2: unbound variable")
    --suite|--results|--frameworks|--n|--methods|--bases)
      [[ $# -ge 2 && -n "$2" && "$2" != --* ]] \
        || { echo "run_all.sh: $1 needs a value (see --help)" >&2; exit 2; } ;;&
    --suite) SUITE="$2"; shift 2 ;;
    --results) RESULTS="$2"; shift 2 ;;
    --frameworks) FRAMEWORKS="$2"; shift 2 ;;
    --n) N="$2"; shift 2 ;;
    --methods) METHODS_ARG="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --bases) BASES_ARG="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

for framework in ${FRAMEWORKS//,/ }; do
  [[ "$framework" == vlmeval || "$framework" == lmms_eval || "$FRAMEWORKS" == none ]] \
    || { echo "run_all.sh: --frameworks takes vlmeval and/or lmms_eval (comma-separated), or none, got '$framework'" >&2
         exit 2; }
done
[[ -z "$N" || "$N" =~ ^[1-9][0-9]*$ ]] || { echo "run_all.sh: --n takes a positive integer, got '$N'" >&2; exit 2; }

[[ ! -e "$RESULTS" || -d "$RESULTS" ]] \
  || { echo "run_all.sh: --results $RESULTS is a file; give a folder" >&2; exit 2; }

PY=${PYTHON:-python3}
LMMS_EXTRA_RUNS=()  # lmms-eval runs outside the methods x ratios grid, as entry|method args
exec 3>&1  # --dry-run lines go here, past the commands' own redirections into the log
show() { printf '+' >&3; printf ' %q' "$@" >&3; printf '\n' >&3; }  # a --dry-run line: the command, shell-quoted
run_or_show() { if [[ -n "$DRY_RUN" ]]; then show "$@"; else "$@"; fi; }  # the same argv either way
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [[ -n "$DRY_RUN" ]]; then
  RESULTS=$(realpath -m "$RESULTS")
  LOG=/dev/null
else
  mkdir -p "$RESULTS"
  RESULTS=$(cd "$RESULTS" && pwd)
  LOG="$RESULTS/run_all.log"
fi
echo "== run_all.sh suite=$SUITE frameworks=$FRAMEWORKS gpus=$NGPU results=$RESULTS ($(date -u +%FT%TZ))" | tee -a "$LOG"

if [[ "$SUITE" == demo && -n "$BASES_ARG" ]]; then
  echo "run_all.sh: --bases picks real checkpoints for --suite paper; the demo suite runs every built demo model" >&2
  exit 2
fi
if [[ "$SUITE" == demo ]]; then
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  # CPU: glibc keeps the freed eager-attention maps of the oracle runs instead of faulting them in anew
  eval "$($PY -m tcc_eval.cpu_memory)"  # (tcc_eval/cpu_memory.py; a MALLOC_* value you set wins)
  export TCC_SYNTH_N=${N:-${TCC_SYNTH_N:-100}} TCC_LMMS_SYNTH_N=${N:-${TCC_LMMS_SYNTH_N:-100}}
  export LMUData=${LMUData:-$RESULTS/data/LMUData} TCC_LMMS_DATA=${TCC_LMMS_DATA:-$RESULTS/data/lmms}
  [[ -n "$DRY_RUN" ]] || mkdir -p "$LMUData"
  # the demo families whose model and compressors exist (shipped or rebuilt with `python -m tcc_eval.demo build`)
  read -r -a BUILT <<<"$($PY -m tcc_eval.demo paths | $PY -c "import json,sys; p=json.load(sys.stdin); import tcc_eval.demo as d; print(' '.join(f for f in d.FAMILIES if p[f]['built']))")"
  if [[ ${#BUILT[@]} -eq 0 && -n "$DRY_RUN" ]]; then
    show $PY -m tcc_eval.demo build
    read -r -a BUILT <<<"$($PY -c 'import tcc_eval.demo as d; print(" ".join(d.FAMILIES))')"
  elif [[ ${#BUILT[@]} -eq 0 ]]; then
    echo "demo models missing: building them first (python -m tcc_eval.demo build; about 2 h on 2 CPU cores)" | tee -a "$LOG"
    $PY -m tcc_eval.demo build 2>&1 | tee -a "$LOG"
    read -r -a BUILT <<<"$($PY -m tcc_eval.demo paths | $PY -c "import json,sys; p=json.load(sys.stdin); import tcc_eval.demo as d; print(' '.join(f for f in d.FAMILIES if p[f]['built']))")"
    [[ ${#BUILT[@]} -gt 0 ]] || { echo "run_all.sh: demo build produced no models" >&2; exit 1; }
  fi
  echo "demo families: ${BUILT[*]}" | tee -a "$LOG"
  # resuming reuses finished score files: refuse when they came from other demo weights (a rebuilt or
  # replaced demo), instead of mixing old and new models in one table; the file also records which
  # weights the committed tables came from
  DEMO_ROOT=$($PY -c 'import tcc_eval.demo as d; print(d.ASSETS)')
  FINGERPRINT=$(cd "$DEMO_ROOT" && find . \( -name '*.safetensors' -o -name '*.pt' \) | sort | xargs md5sum | md5sum | cut -c1-32)
  if [[ -f "$RESULTS/demo_fingerprint" && "$(cat "$RESULTS/demo_fingerprint")" != "$FINGERPRINT" ]] \
     && [[ -d "$RESULTS/vlmeval" || -d "$RESULTS/lmms_eval" ]]; then
    echo "run_all.sh: $RESULTS holds results of other demo weights than $DEMO_ROOT (demo_fingerprint differs);" \
         "use --results NEW_DIR, or delete $RESULTS/vlmeval $RESULTS/lmms_eval $RESULTS/demo_fingerprint to rerun" >&2
    exit 1
  fi
  [[ -n "$DRY_RUN" ]] || echo "$FINGERPRINT" >"$RESULTS/demo_fingerprint"
  declare -A DEMO_BASE=([qwen2_vl]=TinyQwen2VL [llava_onevision]=TinyLLaVAOV [vila]=TinyVILA)
  VLMEVAL_BASES=()
  for family in "${BUILT[@]}"; do VLMEVAL_BASES+=("${DEMO_BASE[$family]}"); done
  VLMEVAL_DATA=(TCCSynth_IMG TCCSynth_VID)
  JUDGE=(--judge exact_matching)
  METHODS=(TCC Random A0 FastV Oracle DivPrune Uniform Pool DART PDrop)
  RATIOS=(75 50 25)
  # 4-layer demo LLMs: 25% is the floor of the methods that prune inside the LLM (K/L at K=1; PyramidDrop's L/4)
  SKIP=()
  for base in TinyQwen2VL TinyLLaVAOV TinyVILA; do SKIP+=("${base}_FastV25" "${base}_DART25" "${base}_PDrop25"); done
  LMMS_TASKS=tccsynth_img,tccsynth_vid
  LMMS_INCLUDE=(--include_path "$($PY -c 'import tcc_eval.demo as d; print(d.LMMS_TASKS)')")
  LMMS_LOG_SAMPLES=()
  LMMS_METHODS=(tcc random a0)  # lmms-eval pays ~20 s start-up per run: the full matrix runs in VLMEvalKit
  LMMS_RATIOS=(50 25)
  LMMS_MODELS=()
  for family in "${BUILT[@]}"; do
    ckpt=$($PY -m tcc_eval.demo paths | $PY -c "import json,sys; print(json.load(sys.stdin)['$family']['model'])")
    # llava_hf reads max_frames_num frames of a video (default 32): the demo's videos have 8, all of them read
    frames=""; [[ "$family" != llava_onevision ]] || frames=",max_frames_num=8"
    LMMS_MODELS+=("${family}_tcc|pretrained=$ckpt$frames")
  done
elif [[ "$SUITE" == paper ]]; then
  VLMEVAL_BASES=(Qwen2VL LLaVAOV VILA15)
  [[ -z "$BASES_ARG" ]] || IFS=, read -ra VLMEVAL_BASES <<<"$BASES_ARG"
  VLMEVAL_DATA=(MME MMBench_DEV_EN SEEDBench_IMG MMStar MMVet MVBench_8frame Video-MME_8frame)
  JUDGE=()
  METHODS=(TCC DART PDrop)  # DART and PyramidDrop: the paper's two comparison methods, training-free
  RATIOS=(50 25)
  SKIP=()  # 25% is PyramidDrop's floor (its first quarter keeps all)
  for base in "${VLMEVAL_BASES[@]}"; do SKIP+=("${base}_PDrop25"); done
  LMMS_TASKS=mme,mmbench_en_dev,seedbench,mmstar,mvbench,videomme
  LMMS_INCLUDE=()
  # lmms-eval's MVBench score leaves empty answers out of its denominator: the samples logs let the tables count them
  LMMS_LOG_SAMPLES=(--log_samples)
  LMMS_METHODS=(tcc)
  LMMS_RATIOS=(50 25)
  # PyramidDrop at 25% runs here instead, its first stage moved to layer 2 (where FastV and DART prune), the
  # others at its own L/2 and 3L/4 of the checkpoint's L layers (pdrop_layers, its layer_list; 2/14/21 for
  # Qwen2-7B's 28, 2/16/24 for Llama-3-8B's 32)
  # the same checkpoints as the VLMEvalKit runs (TCC_MODEL_PATH_<BASE> included), as <family>_tcc; with no
  # compressor= given, their tcc runs load the same $TCC_COMPRESSOR_DIR/<Base>_<modality>.pt files
  LMMS_MODELS=()
  # one Python process checks and resolves every base (each start-up imports torch): its lmms-eval model line
  # and PyramidDrop's early stages
  lines=$($PY -c "import sys
from model_registry import BASES, resolve_model_path
from tcc_eval.flops import guess_shape
known = [n for n, b in BASES.items() if not b.demo and not b.unavailable]
bad = [b for b in sys.argv[1:] if b not in known]
if bad:
    sys.exit(f'run_all.sh: --bases {bad}: not a real checkpoint of the registry that can run; known: {\",\".join(known)}')
for name in sys.argv[1:]:
    b = BASES[name]
    L = guess_shape(b.hf_id).layers
    print(f'{b.family}_tcc|pretrained={resolve_model_path(b)}', f'2/{L // 2}/{3 * L // 4}')" "${VLMEVAL_BASES[@]}") \
    || exit 2
  while read -r model stages; do
    LMMS_MODELS+=("$model")
    LMMS_EXTRA_RUNS+=("$model|method=pdrop,ratio=0.25,pdrop_layers=$stages")
  done <<<"$lines"
  echo "paper suite: tcc needs trained compressors (TCC_COMPRESSOR_DIR or ~/.cache/tcc_eval/compressors); see README" | tee -a "$LOG"
else
  echo "run_all.sh: --suite must be demo or paper, got '$SUITE'" >&2
  exit 2
fi
if [[ -n "$METHODS_ARG" ]]; then
  IFS=, read -ra METHODS <<<"$METHODS_ARG"
  $PY -c "import sys; from model_registry import METHOD_TOKENS as known
bad = [m for m in sys.argv[1:] if m not in known]
sys.exit(f'run_all.sh: unknown method token(s) {bad} in --methods; known: {\",\".join(known)}' if bad else 0)" \
    "${METHODS[@]}" || exit 2
fi

vlmeval_launcher() {  # multi-GPU through VLMEvalKit's own torchrun support
  if [[ "$NGPU" -gt 1 ]]; then echo "torchrun --nproc-per-node=$NGPU -m vlmeval.run"; else echo "$PY -m vlmeval.run"; fi
}
lmms_launcher() {  # multi-GPU through lmms-eval's own accelerate support
  if [[ "$NGPU" -gt 1 ]]; then echo "accelerate launch --num_processes=$NGPU -m lmms_eval"; else echo "$PY -m lmms_eval"; fi
}

if [[ ",$FRAMEWORKS," == *,vlmeval,* ]]; then
  MODELS=()
  for base in "${VLMEVAL_BASES[@]}"; do
    MODELS+=("${base}_Vanilla")
    for m in "${METHODS[@]}"; do for r in "${RATIOS[@]}"; do
      [[ " ${SKIP[*]} " == *" ${base}_${m}${r} "* ]] || MODELS+=("${base}_${m}${r}")
    done; done
  done
  WORK="$RESULTS/vlmeval"
  if [[ "$SUITE" == demo && -z "$DRY_RUN" ]]; then
    # score files are reused when present: first make sure the synthetic sets they came from have this size
    # (the check VLMEvalKit runs when it loads a set, which a fully resumed run never reaches)
    $PY -c "import sys
from tcc_eval.integrations.vlmeval.datasets import SetMismatch, ensure_image_set, ensure_video_set
try:
    ensure_image_set(), ensure_video_set()
except SetMismatch as err:
    sys.exit(f'run_all.sh: {err.data} holds a synthetic set of {err.was}, and any score files in $WORK came from '
             f'it; this run asks for {err.now}. Rerun with --results NEW_DIR (and another LMUData if you set it); '
             f'regenerating the set here would leave those score files in place')" || exit 1
  fi
  has_score() { compgen -G "$WORK/$1/${1}_${2}_*.csv" >/dev/null || compgen -G "$WORK/$1/${1}_${2}_*rating.json" >/dev/null; }
  todo=()
  for model in "${MODELS[@]}"; do
    for data in "${VLMEVAL_DATA[@]}"; do
      if ! has_score "$model" "$data"; then todo+=("$model"); break; fi
    done
  done
  echo "[vlmeval] ${#MODELS[@]} models x ${#VLMEVAL_DATA[@]} datasets: $(( ${#MODELS[@]} - ${#todo[@]} )) models done, ${#todo[@]} to run" | tee -a "$LOG"
  if [[ ${#todo[@]} -gt 0 ]]; then
    start=$(date +%s)
    # one process for all models: VLMEvalKit's start-up is paid once, finished model x dataset pairs are reused
    run_or_show $(vlmeval_launcher) --model "${todo[@]}" --data "${VLMEVAL_DATA[@]}" "${JUDGE[@]}" --work-dir "$WORK" \
      >>"$LOG" 2>&1 || { echo "run_all.sh: VLMEvalKit failed (see $LOG)" >&2; exit 1; }
    [[ -n "$DRY_RUN" ]] || echo "[vlmeval] $(( $(date +%s) - start )) s" | tee -a "$LOG"
  fi
  for model in "${MODELS[@]}"; do
    [[ -z "$DRY_RUN" ]] || break
    for data in "${VLMEVAL_DATA[@]}"; do
      has_score "$model" "$data" || { echo "run_all.sh: VLMEvalKit wrote no score file for $model on $data (see $LOG)" >&2; exit 1; }
    done
  done
fi

if [[ ",$FRAMEWORKS," == *,lmms_eval,* ]]; then
  OUT="$RESULTS/lmms_eval"
  [[ -n "$DRY_RUN" ]] || mkdir -p "$OUT/.done"
  runs=()
  for entry in "${LMMS_MODELS[@]}"; do
    runs+=("$entry|method=none")
    for m in "${LMMS_METHODS[@]}"; do for r in "${LMMS_RATIOS[@]}"; do
      runs+=("$entry|method=$m,ratio=$(awk "BEGIN{print $r/100}")")
    done; done
  done
  runs+=("${LMMS_EXTRA_RUNS[@]}")
  SET_SIZE=""; [[ "$SUITE" != demo ]] || SET_SIZE=" n=$TCC_LMMS_SYNTH_N"  # the demo set's size is part of a run
  i=0
  for run in "${runs[@]}"; do
    i=$((i + 1))
    IFS='|' read -r model base_args method_args <<<"$run"
    args="$base_args,$method_args"
    if [[ "$SUITE" == demo && "$method_args" == method=tcc* ]]; then
      family=${model%_tcc}
      args="$args,compressor=$($PY -m tcc_eval.demo paths | $PY -c "import json,sys,os; print(os.path.dirname(json.load(sys.stdin)['$family']['compressor_image']))")"
    fi
    if [[ "$SUITE" == demo && "$method_args" == method=fastv* ]]; then args="$args,fastv_k=1"; fi
    # qwen2_5_vl_tcc became upstream's chat flavour (other prompts): a run of the simple one must not count as done
    flavour=""; [[ "$model" != qwen2_5_vl_tcc ]] || flavour=" chat"
    tag=$(echo "$model$flavour $args $LMMS_TASKS$SET_SIZE" | md5sum | cut -c1-16)
    if [[ -f "$OUT/.done/$tag" ]]; then echo "[lmms-eval $i/${#runs[@]}] $model $method_args: done, skipped" | tee -a "$LOG"; continue; fi
    echo "[lmms-eval $i/${#runs[@]}] $model $method_args" | tee -a "$LOG"
    start=$(date +%s)
    run_or_show $(lmms_launcher) --model "$model" --model_args "$args" --tasks "$LMMS_TASKS" "${LMMS_INCLUDE[@]}" \
      "${LMMS_LOG_SAMPLES[@]}" --batch_size 1 --output_path "$OUT" --timezone UTC >>"$LOG" 2>&1 \
      || { echo "run_all.sh: lmms-eval failed for $model $args (see $LOG)" >&2; exit 1; }
    [[ -z "$DRY_RUN" ]] || continue
    $PY -m tcc_eval.integrations.lmms_eval "$OUT" --tasks "$LMMS_TASKS" --newer-than "$start" >>"$LOG" 2>&1 \
      || { echo "run_all.sh: lmms-eval produced no results file for $model $args (see $LOG)" >&2; exit 1; }
    echo "$model $args" >"$OUT/.done/$tag"
    echo "    $(( $(date +%s) - start )) s" | tee -a "$LOG"
  done
fi

[[ "$FRAMEWORKS" != none ]] || { echo "== set-up only (--frameworks none): no tables" | tee -a "$LOG"; exit 0; }
run_or_show $PY tcc_eval/aggregate.py "$RESULTS" | tee -a "$LOG"
[[ -z "$DRY_RUN" ]] || exit 0
echo "== tables in $RESULTS/tables/ ($(date -u +%FT%TZ))" | tee -a "$LOG"
