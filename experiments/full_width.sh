#!/usr/bin/env bash
# The full-width ResNet-18 runs of BENCHMARKS.md on one GPU, time-boxed (issue 11).
#
#   FMNIST_DIR=... CIFAR_DIR=... RUNS=/tmp/fw OUT=/tmp/out bash experiments/full_width.sh
#
# Runs three streams side by side on the one GPU (each process takes at most a third of its
# memory), most important first:
#   A: CIFAR-10 (JPEG copy), full width, $CIFAR_EPOCHS epochs, rec-LRA (the config's
#      short-path wiring, issue 30), seed 0
#   B: the same with backprop
#   D: the same with kp, the Kolen-Pollack chain (issue 11's "mirror" wiring; not in the
#      default STREAMS: STREAMS="A B D" for issue 30's three-way comparison)
#   C: Fashion-MNIST, full width (configs/fmnist_resnet18.py:full), seeds $FMNIST_SEEDS,
#      rec-LRA and backprop in turn
# Each run trains in $RUNS/<dataset>/<rule>_s<seed> (resumable: a rerun continues) and
# stops at $DEADLINE seconds after the start. Its metrics.jsonl, results.json and
# config.json, the logs and a summary table are copied to $OUT (if set), so a run cut
# short still reports its finished epochs.
#
# Environment:
#   FMNIST_DIR    Fashion-MNIST IDX files (gzipped)
#   CIFAR_DIR     CIFAR-10 image-folder tree (train/<class>/*, test/<class>/*), or a
#                 .tar.gz of one (extracted to $RUNS/cifar10_data)
#   WHEELS        optional folder of wheels the machine lacks (ml-collections, grain, ...):
#                 installed with pip --no-index --no-deps into $RUNS/site
#   CIFAR_EPOCHS  default 30;  FMNIST_SEEDS  default "0 1 2";  DEADLINE  default 540
#   CIFAR_SEED    default 0;   STREAMS  default "A B C" (the streams to run)
#   EXTRA_FLAGS   appended to every run (a dry run on a CPU: "--config.model.width=4")
set -uo pipefail

RUNS=${RUNS:-/tmp/full_width}
CIFAR_EPOCHS=${CIFAR_EPOCHS:-30}
CIFAR_SEED=${CIFAR_SEED:-0}
FMNIST_SEEDS=${FMNIST_SEEDS:-"0 1 2"}
DEADLINE=${DEADLINE:-540}
STREAMS=${STREAMS:-"A B C"}
START=$(date +%s)
mkdir -p "$RUNS/logs"
PY=${PYTHON:-$(command -v python3 || command -v python)}

left() { echo $(( DEADLINE - ($(date +%s) - START) )); }

collect() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT"
  cp -r "$RUNS/logs" "$OUT/" 2>/dev/null
  for d in "$RUNS"/cifar10/* "$RUNS"/fashion_mnist/*; do
    [ -d "$d" ] || continue
    dest="$OUT/$(basename "$(dirname "$d")")/$(basename "$d")"
    mkdir -p "$dest"
    cp "$d"/metrics.jsonl "$d"/results.json "$d"/config.json "$dest"/ 2>/dev/null
  done
  "$PY" - "$RUNS" > "$OUT/summary.md" 2>&1 <<'EOF'
import json, os, sys
runs = sys.argv[1]
print("| dataset | run | epochs done | last val % | last test % | final test % | train s |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for ds in ("cifar10", "fashion_mnist"):
    base = os.path.join(runs, ds)
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name)
        lines = []
        if os.path.exists(os.path.join(path, "metrics.jsonl")):
            lines = [json.loads(l) for l in open(os.path.join(path, "metrics.jsonl")) if l.strip()]
        res = {}
        if os.path.exists(os.path.join(path, "results.json")):
            res = json.load(open(os.path.join(path, "results.json")))
        last = lines[-1] if lines else {}
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}"
        print(f"| {ds} | {name} | {last.get('epoch', 0)} | {pct(last.get('val_accuracy'))} | "
              f"{pct(last.get('test_accuracy'))} | {pct(res.get('test_accuracy'))} | "
              f"{round(last['train_seconds']) if 'train_seconds' in last else '-'} |")
EOF
  cat "$OUT/summary.md"
}
trap collect EXIT

if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --target "$RUNS/site" "$WHEELS"/*.whl \
    || { echo "installing $WHEELS failed"; exit 1; }
  export PYTHONPATH="$RUNS/site:${PYTHONPATH:-}"
fi
if [[ "${CIFAR_DIR:-}" == *.tar.gz ]]; then
  mkdir -p "$RUNS/cifar10_data"
  tar xzf "$CIFAR_DIR" -C "$RUNS/cifar10_data" || exit 1
  CIFAR_DIR="$RUNS/cifar10_data"
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" || exit 1

# Decode the CIFAR-10 folder once, before the two CIFAR streams start.
if [[ "$STREAMS" == *A* || "$STREAMS" == *B* ]]; then
  "$PY" - "$CIFAR_DIR" "$RUNS/cache" <<'EOF' || exit 1
import sys, time
from configs import cifar10_resnet18
from rec_lra_jax import builder
config = cifar10_resnet18.get_config()
with config.unlocked():
    config.data.dir, config.data.cache_dir = sys.argv[1], sys.argv[2]
t = time.time()
builder.create_data(config)
print(f"CIFAR-10 folder decoded and cached in {time.time() - t:.1f} s")
EOF
fi

run() {  # run DATASET ENTRY CONFIG RULE SEED [extra flags...]
  local ds=$1 entry=$2 config=$3 rule=$4 seed=$5; shift 5
  local t; t=$(left)
  if (( t < 30 )); then echo "skip $ds $rule seed $seed: ${t} s left"; return; fi
  echo "$(date +%T) start $ds $rule seed $seed (${t} s left)"
  timeout "$t" "$PY" -m "experiments.$entry" --config="$config" \
    --workdir="$RUNS/$ds/${rule}_s$seed" --config.rule="$rule" --config.seed="$seed" "$@" \
    ${EXTRA_FLAGS:-} > "$RUNS/logs/${ds}_${rule}_s$seed.log" 2>&1
  local rc=$?
  echo "$(date +%T) end $ds $rule seed $seed: exit $rc$( ((rc == 124)) && echo ' (deadline)')"
}

CIFAR_FLAGS=(--config.data.dir="$CIFAR_DIR" --config.data.cache_dir="$RUNS/cache"
             --config.num_epochs="$CIFAR_EPOCHS" --config.diagnostics.test_curve=True)
FMNIST_FLAGS=(--config.data.dir="$FMNIST_DIR" --config.diagnostics.test_curve=True)
pids=()
[[ "$STREAMS" == *A* ]] && { run cifar10 cifar10 configs/cifar10_resnet18.py rec_lra \
  "$CIFAR_SEED" "${CIFAR_FLAGS[@]}" --config.diagnostics.cosine=True & pids+=($!); }
[[ "$STREAMS" == *B* ]] && { run cifar10 cifar10 configs/cifar10_resnet18.py bp \
  "$CIFAR_SEED" "${CIFAR_FLAGS[@]}" & pids+=($!); }
[[ "$STREAMS" == *D* ]] && { run cifar10 cifar10 configs/cifar10_resnet18.py kp \
  "$CIFAR_SEED" "${CIFAR_FLAGS[@]}" --config.diagnostics.cosine=True & pids+=($!); }
if [[ "$STREAMS" == *C* ]]; then
  ( for seed in $FMNIST_SEEDS; do
      for rule in rec_lra bp; do
        run fashion_mnist fashion_mnist configs/fmnist_resnet18.py:full "$rule" "$seed" \
          "${FMNIST_FLAGS[@]}"
      done
    done ) & pids+=($!)
fi
wait "${pids[@]}"
echo "all streams done after $(( $(date +%s) - START )) s"
