#!/usr/bin/env bash
# The Fashion-MNIST track (shared/design/BENCHMARKS.md): the whole chain at full length on 2 CPU cores,
# then a results table. `make fashion-mnist` runs this; every stage is resumable (--resume) and skipped
# when its output already exists, so an interrupted run continues where it stopped.
#   bash examples/fashion_mnist.sh [OUTDIR]
set -euo pipefail
OUT=${1:-runs/fashion-mnist}
MNCLI=${MNCLI:-.venv/bin/mncli}
D=(--dataset fashion-mnist)
# SUBSET=N trains every compression stage on N training images only (a quicker, rougher run).
[[ -n "${SUBSET:-}" ]] && D+=(--subset "$SUBSET")
mkdir -p "$OUT"
SECONDS=0
stage() {  # stage NAME OUTPUT COMMAND...: run unless OUTPUT exists, log its wall time
    local name=$1 out=$2; shift 2
    if [[ -f "$out" ]]; then echo "== $name: $out exists, kept" >&2; return; fi
    local t0=$SECONDS resume=()
    [[ -d "${out%.safetensors}.ckpt" ]] && resume=(--resume)  # an interrupted earlier run
    echo "== $name" >&2
    "$@" "${resume[@]}" -o "$out"
    echo "$name $((SECONDS - t0))" >> "$OUT/times.txt"
}

# 1. fp32 baseline: fmnist-net (~58K params, 4.8M MACs), SGD nesterov, cosine, label smoothing.
stage train "$OUT/fp.safetensors" $MNCLI train --arch fmnist-net --dataset fashion-mnist --epochs "${TRAIN_EPOCHS:-20}" \
    --lr 0.1 --weight-decay 5e-4 --label-smoothing 0.1
# 2. AGP to 70 % zeros in the block convs (depthwise kept dense: pruning them costs this small net most) (cubic schedule over the first epochs, then fine-tuning).
stage prune "$OUT/pruned.safetensors" $MNCLI prune "$OUT/fp.safetensors" "${D[@]}" --method agp \
    --sparsity "${SPARSITY:-0.7}" --epochs "${PRUNE_EPOCHS:-6}" --start 0 --end "${AGP_END:-4}" --freq 1 --lr 0.01 --exclude-depthwise
# 3. EC2T: entropy-constrained ternary codes; pruned weights stay zero.
stage ternarize "$OUT/ternary.safetensors" $MNCLI ternarize "$OUT/pruned.safetensors" "${D[@]}" \
    --method ec2t --epochs "${TERN_EPOCHS:-4}" --retrain-epochs "${TERN_RETRAIN_EPOCHS:-2}"
# 4. 4-bit activations (LSQ), 8 bits at the first and last layer; ternary weights stay ternary.
stage quantize "$OUT/quantized.safetensors" $MNCLI quantize "$OUT/ternary.safetensors" "${D[@]}" \
    --weight-bits 4 --act-bits "${ACT_BITS:-4}" --epochs "${QUANT_EPOCHS:-3}"

$MNCLI score "$OUT/quantized.safetensors"
$MNCLI verify "$OUT/quantized.safetensors" > /dev/null
$MNCLI report "$OUT/quantized.safetensors" --chain --markdown "$OUT/results.md"
echo "total wall time: ${SECONDS}s (stages in $OUT/times.txt)" | tee -a "$OUT/results.md" >&2
