"""How well a ProxylessNAS super-network trains on single sampled paths, and why.

The Fashion-MNIST search space of `mncli search`, trained for a fixed number of SGD steps on
Fashion-MNIST (batch 128, lr 0.05) four ways, training accuracy per window of steps written to
bench/results/supernet_single_path.json:

- `one_path`: every choice block fixed to its first candidate (an ordinary network: the ceiling);
- `all_free`: a uniformly random candidate per block per batch, each with its own weights (the paper);
- `openers_fixed`: as `all_free`, but the blocks that open a stage (stride 2 or a new width, so no
  residual) fixed to their first candidate;
- `shared`: as `all_free`, but the candidates of a block share one set of weights (a k x k kernel is
  the centre of the 7x7 one, expansion e uses the first e * c_in hidden channels), batch norm per
  candidate: `mncli search --shared-weights`, not the paper's super-network.

    python bench/supernet_single_path.py [--steps 400] [--window 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mncli.data import load_data
from mncli.search.space import DEFAULT_OPS, SearchSpace, default_space
from mncli.search.supernet import SuperNet

MODES = ("one_path", "all_free", "openers_fixed", "shared")


def build(mode: str, space: SearchSpace) -> SuperNet:
    net = SuperNet(space, seed=0, shared=mode == "shared")
    for op in net.mixed:
        op.mode = "fixed"
    return net.train()


def choose(mode: str, net: SuperNet, generator: torch.Generator) -> None:
    for op in net.mixed:
        opener = not (op.stride == 1 and op.c_in == op.c_out)
        if mode == "one_path" or (mode == "openers_fixed" and opener):
            op.active = 0
        else:
            op.active = int(torch.randint(len(op.choices), (1,), generator=generator).item())


def run(mode: str, data, space: SearchSpace, steps: int, window: int) -> dict:
    torch.manual_seed(0)
    net = build(mode, space)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=4e-5)
    generator = torch.Generator().manual_seed(0)
    accuracy, correct, seen, started = [], 0, 0, time.perf_counter()
    for step, (x, y) in enumerate(data.train.batches(128, epoch=0, seed=0)):
        if step >= steps:
            break
        choose(mode, net, generator)
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        correct, seen = correct + (logits.argmax(1) == y).sum().item(), seen + y.numel()
        if (step + 1) % window == 0:
            accuracy.append(round(correct / seen, 4))
            correct = seen = 0
    return {"train_acc_per_window": accuracy, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "supernet_single_path.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", batch_size=128, subset=args.steps * 128)
    space = SearchSpace(
        in_channels=1, input_size=28, num_classes=10, ops=list(DEFAULT_OPS), **default_space(1, 28, 10)
    )
    results = {}
    for mode in MODES:
        results[mode] = run(mode, data, space, args.steps, args.window)
        print(mode, results[mode], flush=True)
    out = {"benchmark": "supernet_single_path", "steps": args.steps, "window": args.window, "lr": 0.05}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**out, "modes": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
