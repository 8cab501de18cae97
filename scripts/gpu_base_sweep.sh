#!/usr/bin/env bash
# One GPU call (under 10 minutes) that trains candidate tiny-world bases side by side, keeps the best, and trains
# the five FeatInv inverters onto it. The classifiers and the VAE are kept as they are in data/.
#   bash scripts/gpu_base_sweep.sh OUTDIR
# Candidates (each on the shipped VAE's latents, batch 256, EMA 0.998, for BASE_MIN minutes):
#   eps-cont  the shipped base continued (epsilon-prediction), lr 3e-4
#   v-cont    the shipped base continued and switched to v-prediction, lr 5e-4
#   v-new     the shipped architecture from scratch, v-prediction, lr 1e-3
#   eps-new   the same from scratch with epsilon-prediction (the control for v-new), lr 1e-3
#   v-long    v-new at batch 512 and EMA 0.999: for a sweep of one or two candidates, each with a larger share
#             of the GPU
#   v-wide    v-long with a wider first level (64,96,96: 4.0 M parameters against 3.7 M; the 40 MB of data/
#             with five inverters allow about 4.9 M)
# CANDS (default "eps-cont v-cont v-new eps-new") names the candidates that run, side by side.
# Each base's card is measured as data/'s is (512 samples, DPM++ 20, seed 0). The pick is the highest confident
# fraction among the candidates whose FD is at most FD_MAX (default 40; the shipped base's is 30.7).
# Inverters: fine-tuned from data/'s for a continued base, from scratch (as FeatInv does) for a new one
# (profile gpu-sweep: 3 minutes, or INV_MIN, cut to what is left of the 585 s). Returns OUTDIR/log.txt,
# OUTDIR/cands.tar.part-* (every candidate's unet/, scheduler/ and card) and, only if all five inverters finished,
# OUTDIR/weights.tar.part-* (data/ with the new base and inverters, which must go together). Unpack with
#   cat OUTDIR/weights.tar.part-* | tar -x -C data/
# WORK (default /tmp/wb-sweep) holds the runs; PYTHON (default python3) runs them.
# Smoke test on CPU (PICK forces a candidate, to try both inverter paths; tests/test_training.py runs it):
#   DEVICE=cpu BASE_ARGS='--steps 3 --batch-size 8 --train-images 64 --eval-images 8' PROFILE=smoke-data \
#   PICK=v-cont bash scripts/gpu_base_sweep.sh /tmp/sweep
set -uo pipefail
out=${1:?usage: gpu_base_sweep.sh OUTDIR}
device=${DEVICE:-cuda}
base_min=${BASE_MIN:-4.0}
profile=${PROFILE:-gpu-sweep}
fd_max=${FD_MAX:-40}
py=${PYTHON:-python3}
base_timeout=$("$py" -c "print(int(float('$base_min') * 60 + 120))")  # training, then saving and the card
inv_cap=${INV_TIMEOUT:-290}  # inverters: 3 minutes of training, caches before and cards after
total=${TOTAL_S:-585}  # the packing must happen inside one 600 s call, whatever ran late before it
mkdir -p "$out"
if ! "$py" -c "import diffusers" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
log=$out/log.txt
work=${WORK:-/tmp/wb-sweep}; stage=$work/ship; runs=$work/runs
rm -rf "$stage" "$runs"; mkdir -p "$stage" "$runs"
cp -r data/. "$stage/"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  "$py" -c "import torch, timm, diffusers, accelerate; print('torch', torch.__version__, 'timm', timm.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)"
} 2>&1 | tee "$log"

common=(--vae data/tinyworld-base/vae --batch-size 256 --train-images 100000 --steps 4000 --max-minutes "$base_min"
        --ema 0.998 --save-every 100000 --eval-classifiers data --device "$device" --no-progress)
declare -A cand=(
  [eps-cont]="--init-from data/tinyworld-base --lr 3e-4"
  [v-cont]="--init-from data/tinyworld-base --prediction-type v_prediction --lr 5e-4"
  [v-new]="--prediction-type v_prediction --lr 1e-3"
  [eps-new]="--prediction-type epsilon --lr 1e-3"
  [v-long]="--prediction-type v_prediction --lr 1e-3 --batch-size 512 --ema 0.999 --steps 40000"
  [v-wide]="--prediction-type v_prediction --lr 1e-3 --batch-size 512 --ema 0.999 --steps 40000 --widths 64,96,96"
)
read -r -a names <<< "${CANDS:-eps-cont v-cont v-new eps-new}"
for name in "${names[@]}"; do
  [ -n "${cand[$name]:-}" ] || { echo "[sweep] unknown candidate $name; known: ${!cand[*]}" | tee -a "$log"; exit 2; }
done
echo "[sweep] candidates: ${names[*]}" | tee -a "$log"
for name in "${names[@]}"; do
  # shellcheck disable=SC2086
  timeout "$base_timeout" "$py" -m workbench.cli train-base "${common[@]}" ${cand[$name]} ${BASE_ARGS:-} --out "$runs/$name" \
    --ship "$runs/$name/ship" > "$runs/$name.log" 2>&1 &
done
wait
echo "[sweep] bases done after $(elapsed) s" | tee -a "$log"
for name in "${names[@]}"; do echo "=== $name: ${cand[$name]}"; tail -n 3 "$runs/$name.log"; done >> "$log" 2>&1
(cd "$runs" && tar -cf - --exclude=vae ./*/ship/tinyworld-base) | split -b 15M - "$out/cands.tar.part-"

pick=$("$py" - "$runs" "$fd_max" <<'PY' 2>>"$log"
import json, sys
from pathlib import Path
runs, fd_max = Path(sys.argv[1]), float(sys.argv[2])
rows = []
for card in sorted(runs.glob("*/ship/tinyworld-base/card.json")):
    c = json.loads(card.read_text()); m = c.get("metrics", {})
    rows.append((m.get("confident_fraction", -1), m.get("fd_samples_vs_real", 1e9), card.parts[-4], c["training"]["steps"]))
    print(f"[sweep] {rows[-1][2]:8s} steps {rows[-1][3]:5d} confident {rows[-1][0]:.4f} FD {rows[-1][1]:.1f}", file=sys.stderr)
ok = [r for r in rows if r[1] <= fd_max] or rows
print(max(ok)[2] if ok else "")
PY
)
[ -n "${PICK:-}" ] && pick=$PICK  # a forced pick (the smoke tests of both inverter paths)
echo "[sweep] picked: ${pick:-none}" | tee -a "$log"
if [ -z "$pick" ]; then echo "[sweep] no base finished; nothing to ship" | tee -a "$log"; exit 1; fi
rm -rf "$stage/tinyworld-base" && cp -r "$runs/$pick/ship/tinyworld-base" "$stage/tinyworld-base"
init=(); case "$pick" in *-cont) init=(--init-from data) ;; esac
inv_timeout=$(( total - $(elapsed) - 10 )); [ "$inv_timeout" -gt "$inv_cap" ] && inv_timeout=$inv_cap
# The inverters' training must end before the timeout: about 90 s go to start-up, caches and cards (measured on one
# H100: 45 s before the first step). Their minutes are cut to fit; a late base phase leaves them fewer.
inv_min=$("$py" -c "print(round(min(float('${INV_MIN:-3.0}'), ($inv_timeout - 90) / 60), 2))")
echo "[sweep] inverters get at most $inv_timeout s, $inv_min minutes of training" | tee -a "$log"
inv_args=(--inv-args "--max-minutes $inv_min")
if "$py" -c "import sys; sys.exit(float('$inv_min') >= 0.5)"; then
  echo "[sweep] under 0.5 minutes left for the inverters: skipped (the candidates are in cands.tar)" | tee -a "$log"
  exit 1
fi
timeout "$inv_timeout" "$py" -m workbench.training.all --profile "$profile" "${init[@]}" --only inv-cnn-last inv-vit-last inv-cnn-mid \
  inv-vit-mid inv-cnn-pooled "${inv_args[@]}" --device "$device" --jobs 5 --runs "$runs/inv" --ship "$stage" --no-progress 2>&1 \
  | tee -a "$log"
inv_rc=${PIPESTATUS[0]}
echo "[sweep] all.py exit $inv_rc after $(elapsed) s" | tee -a "$log"
for f in "$runs"/inv/*/log.txt; do echo "=== $f"; tail -n 3 "$f"; done >> "$log" 2>&1
if [ "$inv_rc" = 0 ]; then  # the new inverters' cards (data/'s old ones stay in the stage if any failed)
"$py" - "$stage" <<'PY' 2>&1 | tee -a "$log"
import json, sys
from pathlib import Path
for card in sorted(Path(sys.argv[1]).glob("inverters/*/*/card.json")):
    m = json.loads(card.read_text())["metrics"]
    print(f"[sweep] {card.parent.parent.name}/{card.parent.name}: cosine {m.get('feature_cosine')} top1 {m.get('top1_agreement')}")
PY
  (cd "$stage" && tar -cf - .) | split -b 15M - "$out/weights.tar.part-"
else  # data/'s old inverters do not fit the new base: no pack, rather than an inconsistent one
  echo "[sweep] not every inverter finished: no weights.tar (the candidates are in cands.tar)" | tee -a "$log"
fi
ls -la "$out" | tee -a "$log"
echo "[sweep] done after $(elapsed) s" | tee -a "$log"
exit "$inv_rc"
