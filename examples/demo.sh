#!/usr/bin/env bash
# The mncli demo: a small network through every stage on Fashion-MNIST in a few minutes on 2 CPU
# cores. Each stage reads the previous artifact and writes a new one; nothing is overwritten.
#   bash examples/demo.sh [OUTDIR]        (make demo runs this)
set -euo pipefail
OUT=${1:-demo}
MNCLI=${MNCLI:-.venv/bin/mncli}
SUBSET=${SUBSET:-20000}
mkdir -p "$OUT"
step() { echo; echo "== $*" >&2; }

step "1/6 train fmnist-net-tiny from scratch"
$MNCLI train --arch fmnist-net-tiny --dataset fashion-mnist --subset "$SUBSET" --epochs 4 --lr 0.1 \
    -o "$OUT/fp.safetensors"

step "2/6 prune: AGP to 50 % zeros in the block convs, then fine-tune"
$MNCLI prune "$OUT/fp.safetensors" --dataset fashion-mnist --method agp --sparsity 0.5 \
    --epochs 2 --start 0 --end 2 --freq 1 --subset "$SUBSET" -o "$OUT/pruned.safetensors"

step "3/6 ternarize: TTQ keeps the pruned zeros, stores 2-bit codes"
$MNCLI ternarize "$OUT/pruned.safetensors" --dataset fashion-mnist --method ttq --epochs 2 --lr 0.01 \
    --subset "$SUBSET" -o "$OUT/ternary.safetensors"

step "4/6 quantize: 8-bit activations (LSQ), ternary weights stay ternary"
$MNCLI quantize "$OUT/ternary.safetensors" --dataset fashion-mnist --weight-bits 8 --act-bits 8 --epochs 1 \
    --subset "$SUBSET" -o "$OUT/quantized.safetensors"

step "5/6 score by the MicroNet rules, per layer"
$MNCLI score "$OUT/quantized.safetensors"

step "6/6 the chain: accuracy, score and file size at every stage"
$MNCLI verify "$OUT/quantized.safetensors" >/dev/null
$MNCLI report "$OUT/quantized.safetensors" --chain --markdown "$OUT/report.md"
