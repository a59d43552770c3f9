"""The ProxylessNAS super-network: a fixed stem and head around one choice block per searchable block.

Each choice block (`MixedOp`) holds every candidate as a complete MBConv block of the model zoo (with
its residual where the block has one) and `nn.Identity` for `zero`; exactly one candidate runs per
forward pass. The derived network is the zoo's `mbconv` architecture with the chosen block strings, so
`mncli train ARCH.safetensors` trains it from scratch.

With `shared=True` (ours, not the paper's) the candidates of a choice block are cut from one set of
weights: a k x k depthwise kernel is the centre of the largest one, expansion e uses the first e * c_in
hidden channels (squeeze-excite too); batch norm stays per candidate, and Fused-MBConv candidates keep
weights of their own. Separate weights make every switch of a non-residual block change the meaning of
all channels downstream, and the super-network then hardly trains in a short search
(bench/supernet_single_path.py: 30 % vs 77 % training accuracy after 400 steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mncli.models.mbconv import format_block
from mncli.search.space import ZERO, SearchSpace, parse_op

# The zoo's `mbconv` batch-norm epsilon, so the candidates are the derived network's blocks.
BN_EPS = 1e-3


def make_candidate(
    choice: str, c_in: int, c_out: int, stride: int, se_ratio: float = 0.0, act: str = "relu6"
) -> nn.Module:
    """One candidate operation as the zoo builds the block (identity for `zero`)."""
    if choice == ZERO:
        return nn.Identity()
    from mncli.models.blocks import FusedMBConvBlock, MBConvBlock

    op = parse_op(choice)
    block = FusedMBConvBlock if op.fused else MBConvBlock
    return block(
        c_in,
        c_out,
        kernel=op.kernel,
        stride=stride,
        expand=op.expansion,
        se_ratio=se_ratio,
        act=act,
        bn_eps=BN_EPS,
    )


class SharedMBConv(nn.Module):
    """The largest candidate's convolution weights, which every candidate of a block slices."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, kernel: int, expansion: int, se_ratio: float = 0.0
    ):
        super().__init__()
        hidden = c_in * expansion
        self.c_in, self.stride, self.kernel = c_in, stride, kernel
        self.residual = stride == 1 and c_in == c_out
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.dw = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        if se_ratio:  # the zoo's SqueezeExcite, its hidden side sliced like the depthwise conv
            reduced = max(1, int(c_in * se_ratio))
            self.se_reduce = nn.Conv2d(hidden, reduced, 1, bias=True)
            self.se_expand = nn.Conv2d(reduced, hidden, 1, bias=True)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)


class SharedCandidate(nn.Module):
    """One candidate (kernel, expansion) of a `SharedMBConv`, with batch norms of its own. The shared
    weights are held outside the module tree, so they are registered (and saved) once, by MixedOp."""

    def __init__(self, shared: SharedMBConv, kernel: int, expansion: int, c_out: int, act: str = "relu6"):
        super().__init__()
        from mncli.models.blocks import make_act

        object.__setattr__(self, "shared", shared)
        self.kernel, self.hidden = kernel, shared.c_in * expansion
        self.act = make_act(act)  # parameter-free, so one module serves every place the block applies it
        if expansion != 1:
            self.expand_bn = nn.BatchNorm2d(self.hidden, eps=BN_EPS)
        self.dw_bn = nn.BatchNorm2d(self.hidden, eps=BN_EPS)
        self.project_bn = nn.BatchNorm2d(c_out, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, h, k = self.shared, self.hidden, self.kernel
        out = x
        if hasattr(self, "expand_bn"):
            out = self.act(self.expand_bn(F.conv2d(out, w.expand.weight[:h])))
        else:  # expansion 1 skips the expand conv, as the zoo's block does
            h = w.c_in
        crop = (w.kernel - k) // 2
        dw = w.dw.weight[:h, :, crop : crop + k, crop : crop + k]
        out = self.act(self.dw_bn(F.conv2d(out, dw, None, w.stride, k // 2, 1, h)))
        if hasattr(w, "se_reduce"):
            pooled = out.mean((2, 3), keepdim=True)
            squeezed = self.act(F.conv2d(pooled, w.se_reduce.weight[:, :h], w.se_reduce.bias))
            out = out * torch.sigmoid(F.conv2d(squeezed, w.se_expand.weight[:h], w.se_expand.bias[:h]))
        out = self.project_bn(F.conv2d(out, w.project.weight[:, :h]))
        return x + out if w.residual else out


def make_shared_candidates(
    choices: list[str], c_in: int, c_out: int, stride: int, se_ratio: float = 0.0, act: str = "relu6"
):
    """(the shared weights, one module per choice) for a weight-sharing choice block. The MBConv
    candidates share; `zero` and Fused-MBConv candidates are built as without sharing, and a block
    with no MBConv candidate has no shared weights (None)."""
    ops = {c: parse_op(c) for c in choices if c != ZERO}
    sharing = [op for op in ops.values() if not op.fused]
    shared = None
    if sharing:
        kernel, expansion = max(op.kernel for op in sharing), max(int(op.expansion) for op in sharing)
        shared = SharedMBConv(c_in, c_out, stride, kernel, expansion, se_ratio)
    candidates: list[nn.Module] = []
    for choice in choices:
        op = ops.get(choice)
        if op is None or op.fused:
            candidates.append(make_candidate(choice, c_in, c_out, stride, se_ratio, act))
        else:
            candidates.append(SharedCandidate(shared, op.kernel, int(op.expansion), c_out, act))
    return shared, candidates


class MixedOp(nn.Module):
    """A choice block: candidates, architecture parameters alpha, binary gates, one active path.

    alpha and the gates are plain tensors, not registered parameters, so the weight optimiser and the
    weight state dict never see them; `ArchitectureSearch` owns their optimiser and checkpointing.
    """

    def __init__(
        self,
        choices: list[str],
        c_in: int,
        c_out: int,
        stride: int,
        alpha_std: float = 1e-3,
        shared: bool = False,
        se_ratio: float = 0.0,
        act: str = "relu6",
    ):
        super().__init__()
        self.choices = list(choices)
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.se_ratio, self.act = se_ratio, act
        if shared:
            weights, candidates = make_shared_candidates(self.choices, c_in, c_out, stride, se_ratio, act)
            if weights is not None:
                self.shared = weights
        else:
            candidates = [make_candidate(c, c_in, c_out, stride, se_ratio, act) for c in self.choices]
        self.candidates = nn.ModuleList(candidates)
        self.alpha = torch.empty(len(choices)).normal_(0.0, alpha_std).requires_grad_(True)
        self.gates = torch.zeros(len(choices), requires_grad=True)
        # "path": run `active` in training (argmax in eval); "fixed": always `active`;
        # "arch": binary gates + estimator; "argmax": the most likely candidate
        self.mode = "argmax"
        self.active = 0
        self.involved: list[int] = [0]

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.alpha, dim=0)

    def argmax(self) -> int:
        return int(torch.argmax(self.alpha.detach()).item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "arch":
            return _BinaryGateGradient.apply(x, self.gates, self)
        if self.mode == "fixed" or (self.mode == "path" and self.training):
            return self.candidates[self.active](x)
        return self.candidates[self.argmax()](x)


class _BinaryGateGradient(torch.autograd.Function):
    """Forward through the active path only; backward gives dL/dx through that path and
    dL/dg_j = sum(o_j(x) * dL/dy) for every involved candidate j, recomputing each o_j without keeping
    its graph, so memory stays that of one path."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gates: torch.Tensor, mixed: MixedOp) -> torch.Tensor:
        detached = x.detach().requires_grad_(x.requires_grad)
        with torch.enable_grad():
            out = mixed.candidates[mixed.active](detached)
        ctx.mixed, ctx.detached, ctx.out = mixed, detached, out
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        mixed, detached, out = ctx.mixed, ctx.detached, ctx.out
        grad_x = None
        if detached.requires_grad:
            (grad_x,) = torch.autograd.grad(out, detached, grad_out, retain_graph=False)
        gate_grads = torch.zeros(len(mixed.choices), dtype=torch.float32, device=grad_out.device)
        with torch.no_grad():
            for j in mixed.involved:
                o_j = out if j == mixed.active else mixed.candidates[j](detached)
                gate_grads[j] = (o_j.float() * grad_out.float()).sum()
        ctx.mixed = ctx.detached = ctx.out = None
        return grad_x, gate_grads.to(mixed.gates.device), None


class SuperNet(nn.Module):
    """stem -> [fixed first block] -> choice blocks -> [head 1x1 conv] -> pool -> classifier.

    Under torchrun the engine's DDP is told that a step leaves parameters unused: a weight step runs
    one sampled path (the same one on every rank, `ArchitectureSearch` samples with one seed), so the
    other candidates get no gradient on any rank and keep `grad None`, as in a single process."""

    ddp_find_unused_parameters = True

    def __init__(self, space: SearchSpace, seed: int = 0, shared: bool = False):
        super().__init__()
        from mncli.models import create_model
        from mncli.models.blocks import init_weights

        self.space = space
        blocks = space.blocks()
        torch.manual_seed(seed)
        # The zoo builds stem, head and classifier exactly as the derived network will have them.
        template = create_model(
            "mbconv", **fixed_args(space, derived_blocks(space, [b["choices"][0] for b in blocks]))
        )
        self.stem = template.stem
        n_first = 1 if space.first_block else 0
        self.first = nn.Sequential(*list(template.blocks)[:n_first])
        self.head = template.head if hasattr(template, "head") else nn.Identity()
        self.pool, self.flatten, self.dropout = template.pool, template.flatten, template.dropout
        self.classifier = template.classifier
        generator = torch.Generator().manual_seed(seed)
        self.mixed = nn.ModuleList()
        for block in blocks:
            op = MixedOp(
                block["choices"],
                block["c_in"],
                block["c_out"],
                block["stride"],
                shared=shared,
                se_ratio=space.se_ratio,
                act=space.act,
            )
            op.alpha = (
                torch.empty(len(op.choices)).normal_(0.0, 1e-3, generator=generator).requires_grad_(True)
            )
            self.mixed.append(op)
        init_weights(self.mixed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(self.stem(x))
        for op in self.mixed:
            x = op(x)
        return self.classifier(self.dropout(self.flatten(self.pool(self.head(x)))))

    def arch_parameters(self) -> list[torch.Tensor]:
        return [op.alpha for op in self.mixed]

    def set_mode(self, mode: str) -> None:
        for op in self.mixed:
            op.mode = mode

    def chosen(self) -> list[str]:
        return [op.choices[op.argmax()] for op in self.mixed]

    def chosen_indices(self) -> list[int]:
        return [op.argmax() for op in self.mixed]

    def probabilities(self) -> list[dict[str, float]]:
        return [
            {c: round(float(p), 6) for c, p in zip(op.choices, op.probs().detach().tolist(), strict=True)}
            for op in self.mixed
        ]


def fixed_args(space: SearchSpace, blocks: list[str]) -> dict:
    """Arguments of the zoo's `mbconv` family for the given block strings in this space."""
    return {
        "blocks": ([space.first_block] if space.first_block else []) + list(blocks),
        "stem_channels": space.stem_channels,
        "stem_stride": space.stem_stride,
        "head_channels": space.head_channels,
        "act": space.act,
        "num_classes": space.num_classes,
        "in_channels": space.in_channels,
        "input_size": space.input_size,
    }


def derived_blocks(space: SearchSpace, choices: list[str]) -> list[str]:
    """Block strings of the derived network: zero blocks dropped, consecutive identical blocks of a
    stage merged into one string with repeats (stride on its first block, as the zoo reads them)."""
    strings: list[dict] = []
    for block, choice in zip(space.blocks(), choices, strict=True):
        if choice == ZERO:
            continue
        op = parse_op(choice)
        last = strings[-1] if strings else None
        if last is not None and block["stride"] == 1 and last["op"] == op and last["c_out"] == block["c_out"]:
            last["repeats"] += 1
        else:
            strings.append({"op": op, "stride": block["stride"], "c_out": block["c_out"], "repeats": 1})
    return [
        format_block(
            type=b["op"].block_type,
            repeats=b["repeats"],
            kernel=b["op"].kernel,
            stride=b["stride"],
            expand=b["op"].expansion,
            channels=b["c_out"],
            se_ratio=space.se_ratio,
        )
        for b in strings
    ]


def derived_arch(space: SearchSpace, choices: list[str]) -> dict:
    return {"name": "mbconv", "args": fixed_args(space, derived_blocks(space, choices))}
