#!/usr/bin/env bash
# Train every tiny-world artefact on one GPU in under 10 minutes and pack the fp16 weights.
#   bash scripts/train_on_gpu.sh OUTDIR                 # everything from scratch (profile gpu)
#   MODE=refresh bash scripts/train_on_gpu.sh OUTDIR    # continue the shipped base, fine-tune the 5 inverters onto it
# Runs `python -m workbench.training.all --device cuda --jobs 6` from this checkout (PYTHONPATH=.),
# then writes OUTDIR/weights.tar.part-* (<= 15 MB each) and OUTDIR/log.txt. Unpack with
#   cat OUTDIR/weights.tar.part-* | tar -x -C data/
# refresh (profile gpu-refresh, about 8.5 minutes) starts from data/: the classifiers and VAE are kept as they are.
# BASE_ARGS='--prediction-type v_prediction' passes extra arguments to train-base (from scratch only). A wider base
# (--widths, --layers-per-block) must stay under about 4.9 M parameters for data/ to keep its 40 MB with five inverters.
set -uo pipefail
out=${1:?usage: train_on_gpu.sh OUTDIR}
budget=${BUDGET_S:-570}
mkdir -p "$out"
if ! python3 -c "import diffusers" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
stage=/tmp/wb-ship; runs=/tmp/wb-runs
rm -rf "$stage" "$runs"; mkdir -p "$stage"
mode=${MODE:-scratch}
if [ "$mode" = refresh ]; then
  cp -r data/. "$stage/"  # the kept artefacts travel in the pack too, so that unpacking gives a consistent data/
  plan=(--profile gpu-refresh --init-from data --only base base-card inv-cnn-last inv-vit-last inv-cnn-mid inv-vit-mid inv-cnn-pooled)
else
  plan=(--profile gpu)
  [ -n "${BASE_ARGS:-}" ] && plan+=(--base-args "$BASE_ARGS")
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/log.txt"
python3 -c "import torch, timm, diffusers, accelerate; print('torch', torch.__version__, 'timm', timm.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$out/log.txt"
start=$(date +%s)
timeout "$budget" python3 -m workbench.training.all "${plan[@]}" --device cuda --jobs 6 --runs "$runs" \
  --ship "$stage" --no-progress 2>&1 | tee -a "$out/log.txt"
echo "[gpu] all.py exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$out/log.txt"
for f in "$runs"/*/log.txt; do echo "=== $f"; tail -n 4 "$f"; done >> "$out/log.txt" 2>&1
(cd "$stage" && tar -cf - .) | split -b 15M - "$out/weights.tar.part-"
ls -la "$out" | tee -a "$out/log.txt"
