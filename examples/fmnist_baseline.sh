#!/usr/bin/env bash
# The Fashion-MNIST baseline: train fmnist-net (58,050 parameters, 4.85M MACs) to >= 92.5 % test
# accuracy on a CPU, then evaluate and score it. Measured, 20 epochs, seeds 0/1/2: 93.32/93.22/93.06 %
# test, 840 s wall each on one thread of an AMD EPYC (three runs sharing 2 cores). 12 epochs are
# not enough on every seed: 92.00-92.81 % over seeds 0-4 (mean 92.35 %) on the EPYC, 92.60 % for
# seed 0 on a Xeon with AMX (735 CPU-seconds). fmnist-net-tiny (12,810 parameters), 3 epochs:
# 87.49 % test, 89 CPU-seconds.
#
#   bash examples/fmnist_baseline.sh [OUT_DIR]          full recipe
#   TINY=1 bash examples/fmnist_baseline.sh [OUT_DIR]   fmnist-net-tiny, 3 epochs (a minute or two)
#
# Fashion-MNIST is read from /usr/share/datasets/fashion-mnist (Debian: apt-get install
# dataset-fashion-mnist), $MNCLI_DATA, or downloaded with DOWNLOAD=1 into $MNCLI_DATA.
# Ctrl-C keeps a checkpoint; run the script again with RESUME=1 to continue.
set -euo pipefail

OUT=${1:-runs/fmnist-baseline}
MNCLI=${MNCLI:-mncli}
command -v "$MNCLI" >/dev/null || MNCLI=.venv/bin/mncli
mkdir -p "$OUT"

extra=()
[[ "${DOWNLOAD:-0}" == 1 ]] && extra+=(--download)
[[ "${RESUME:-0}" == 1 ]] && extra+=(--resume)

if [[ "${TINY:-0}" == 1 ]]; then
    model=(--arch fmnist-net-tiny --epochs "${EPOCHS:-3}" --lr 0.1)
    out="$OUT/fmnist-tiny.safetensors"
else
    # SGD (nesterov 0.9), cosine from 0.1, weight decay 5e-4 (not on BN, biases), label smoothing 0.1,
    # random crop (2 px padding) + horizontal flip; the best epoch on the 5,000 held-out images is kept.
    model=(--arch fmnist-net --epochs "${EPOCHS:-20}" --lr 0.1 --label-smoothing 0.1)
    out="$OUT/fmnist-net.safetensors"
fi

"$MNCLI" train "${model[@]}" --dataset fashion-mnist --batch-size 128 --weight-decay 5e-4 \
    --seed "${SEED:-0}" "${extra[@]}" -o "$out"
"$MNCLI" eval "$out" --split test
"$MNCLI" score "$out"   # the MicroNet score of the fp32 baseline
