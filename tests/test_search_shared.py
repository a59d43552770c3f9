"""Weight-sharing choice blocks (`mncli search --shared-weights`): each candidate is exactly the zoo's
MBConv block with the sliced weights, the weights exist once, and a search runs with them."""

from __future__ import annotations

import pytest
import torch

from mncli.models.blocks import MBConvBlock
from mncli.search.space import parse_op
from mncli.search.supernet import MixedOp

CHOICES = ["k3_e3", "k5_e6", "k7_e1", "zero"]


def _as_zoo_block(op: MixedOp, index: int) -> MBConvBlock:
    """The zoo block a shared candidate stands for, its weights cut from the shared ones."""
    cand, shared = op.candidates[index], op.shared
    spec = parse_op(op.choices[index])
    block = MBConvBlock(
        op.c_in,
        op.c_out,
        kernel=spec.kernel,
        stride=op.stride,
        expand=spec.expansion,
        se_ratio=op.se_ratio,
        act=op.act,
        bn_eps=1e-3,
    )
    hidden, crop = cand.hidden, (shared.kernel - spec.kernel) // 2
    with torch.no_grad():
        if spec.expansion != 1:
            block.expand.weight.copy_(shared.expand.weight[:hidden])
            block.expand_bn.load_state_dict(cand.expand_bn.state_dict())
        else:
            hidden = op.c_in
        block.dw.weight.copy_(
            shared.dw.weight[:hidden, :, crop : crop + spec.kernel, crop : crop + spec.kernel]
        )
        block.dw_bn.load_state_dict(cand.dw_bn.state_dict())
        if op.se_ratio:
            block.se.reduce.weight.copy_(shared.se_reduce.weight[:, :hidden])
            block.se.reduce.bias.copy_(shared.se_reduce.bias)
            block.se.expand.weight.copy_(shared.se_expand.weight[:hidden])
            block.se.expand.bias.copy_(shared.se_expand.bias[:hidden])
        block.project.weight.copy_(shared.project.weight[:, :hidden])
        block.project_bn.load_state_dict(cand.project_bn.state_dict())
    return block.eval()


@pytest.mark.parametrize("se_ratio,act", [(0.0, "relu6"), (0.25, "relu6"), (0.25, "hswish")])
@pytest.mark.parametrize("c_in,c_out,stride", [(8, 8, 1), (8, 16, 2)])
def test_each_candidate_is_the_zoo_block_with_sliced_weights(c_in, c_out, stride, se_ratio, act):
    torch.manual_seed(0)
    op = MixedOp(CHOICES, c_in, c_out, stride, shared=True, se_ratio=se_ratio, act=act)
    if se_ratio:
        assert op.shared.se_reduce.weight.shape == (2, 48, 1, 1)  # 0.25 x 8 inputs, largest hidden
    for module in op.modules():  # non-trivial BN statistics, so eval mode uses them
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    op.eval()
    x = torch.randn(2, c_in, 9, 9)
    for index, choice in enumerate(CHOICES):
        if choice == "zero":
            if stride == 1:
                assert torch.equal(op.candidates[index](x), x)
            continue
        torch.testing.assert_close(op.candidates[index](x), _as_zoo_block(op, index)(x))


def test_shared_weights_are_registered_once():
    op = MixedOp(CHOICES, 8, 8, 1, shared=True)
    keys = list(op.state_dict())
    assert sum(k.endswith("dw.weight") for k in keys) == 1
    assert op.shared.dw.weight.shape == (48, 1, 7, 7)  # largest expansion and kernel
    convs = [m for m in op.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3  # expand, depthwise, project: once for all candidates


def test_fused_candidates_keep_their_own_weights_beside_the_shared_ones():
    from mncli.models.blocks import FusedMBConvBlock

    op = MixedOp(["k3_e3", "k5_e6", "fu_k3_e1", "fu_k3_e2", "zero"], 8, 8, 1, shared=True)
    assert op.shared.dw.weight.shape == (48, 1, 5, 5)  # the MBConv candidates alone set the size
    assert all(isinstance(op.candidates[i], FusedMBConvBlock) for i in (2, 3))
    assert op.candidates[2].expand.weight.shape == (8, 8, 3, 3)
    only_fused = MixedOp(["fu_k3_e1", "zero"], 8, 8, 1, shared=True)
    assert not hasattr(only_fused, "shared") and isinstance(only_fused.candidates[0], FusedMBConvBlock)


@pytest.mark.parametrize("ops", [None, "k3_e3,fu_k3_e1,fu_k3_e2,zero"])
def test_a_search_runs_with_shared_weights(tmp_path, run_cli, ops):
    out = tmp_path / "arch.safetensors"
    run = run_cli(
        *[
            "search", "-d", "synthetic:classes=3,shape=1x12x12,train=64,test=16", "--val-size", "16",
            "--widths", "8,16", "--repeats", "2,1", "--strides", "1,2", "--stem-channels", "8",
            "--weights-warmup-epochs", "1", "--epochs", "1", "--batch-size", "16", "--shared-weights",
            "-o", out, "--json",
        ] + (["--ops", ops, "--se-ratio", "0.25", "--act", "hswish", "--stem-stride", "2"] if ops else [])
    )  # fmt: skip
    assert run.code == 0, run.err
    result = run.json
    from mncli.artifact import load_artifact

    manifest = load_artifact(out)[1]
    assert manifest["params"]["shared_weights"] is True
    assert result["derived_cost"] > 0
    blocks = manifest["arch"]["args"]["blocks"]
    assert blocks and all(b.split("_")[0] in ("ir", "fu") for b in blocks)
    if ops:  # every derived block is one of the candidates offered, with squeeze-excite
        assert all(b.endswith("_se0.25") for b in blocks)
        assert manifest["arch"]["args"]["act"] == "hswish" and manifest["arch"]["args"]["stem_stride"] == 2
        assert manifest["search"]["space"]["se_ratio"] == 0.25
        assert {b.split("_")[0] + "_" + b.split("_")[2] + "_" + b.split("_")[4] for b in blocks} <= {
            "ir_k3_e3",
            "fu_k3_e1",
            "fu_k3_e2",
        }
