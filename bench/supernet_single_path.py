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
  candidate. This is not the paper's super-network; it is measured here as the candidate fix.

    python bench/supernet_single_path.py [--steps 400] [--window 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mncli.data import load_data
from mncli.search.space import DEFAULT_OPS, ZERO, SearchSpace, default_space, parse_op
from mncli.search.supernet import SuperNet

MODES = ("one_path", "all_free", "openers_fixed", "shared")


class SharedChoiceBlock(nn.Module):
    """All candidates of one choice block cut from the largest one's weights."""

    def __init__(self, choices: list[str], c_in: int, c_out: int, stride: int, kmax: int = 7, emax: int = 6):
        super().__init__()
        self.choices, self.c_in, self.c_out, self.stride, self.kmax = choices, c_in, c_out, stride, kmax
        self.residual = stride == 1 and c_in == c_out
        hidden = c_in * emax
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.dw = nn.Conv2d(hidden, hidden, kmax, stride, kmax // 2, groups=hidden, bias=False)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.norms = nn.ModuleDict()
        for choice in choices:
            if choice != ZERO:
                h = c_in * parse_op(choice).expansion
                self.norms[choice] = nn.ModuleList(
                    [
                        nn.BatchNorm2d(h, eps=1e-3),
                        nn.BatchNorm2d(h, eps=1e-3),
                        nn.BatchNorm2d(c_out, eps=1e-3),
                    ]
                )
        for conv in (self.expand, self.dw, self.project):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.choices[self.active]
        if choice == ZERO:
            return x
        op = parse_op(choice)
        hidden, k = self.c_in * op.expansion, op.kernel
        crop = (self.kmax - k) // 2
        bn_expand, bn_dw, bn_project = self.norms[choice]
        y = F.relu6(bn_expand(F.conv2d(x, self.expand.weight[:hidden])))
        dw = self.dw.weight[:hidden, :, crop : crop + k, crop : crop + k]
        y = F.relu6(bn_dw(F.conv2d(y, dw, None, self.stride, k // 2, 1, hidden)))
        y = bn_project(F.conv2d(y, self.project.weight[:, :hidden]))
        return x + y if self.residual else y


def build(mode: str, space: SearchSpace) -> SuperNet:
    net = SuperNet(space, seed=0)
    if mode == "shared":
        net.mixed = nn.ModuleList(
            SharedChoiceBlock(op.choices, op.c_in, op.c_out, op.stride) for op in net.mixed
        )
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
