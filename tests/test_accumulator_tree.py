"""Binary adder-tree widths by integer simulation: hand-computed level sums, agreement with a per-output
Python tree (convs with padding, stride, groups, depthwise, and linears), chunking, and the CLI."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_artifact
from mncli.bundle import load_bundle
from mncli.compress.quant.accumulator import bits_for_range, layer_tree_ranges, simulate_tree
from mncli.errors import RuntimeFailure
from mncli.models.quantized import ActQuantizer, attach, set_int_weight

DATA = "synthetic:classes=4,shape=1x12x12,train=96,test=64"
ARCH = {"in_channels": 1, "input_size": 12, "num_classes": 4, "width": 4}


def python_tree(terms: list[int]) -> list[list[int]]:
    """The add results of each level: pairs of consecutive terms, an odd last term passed up."""
    levels = []
    while len(terms) > 1:
        adds = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = adds + terms[-1:] if len(terms) % 2 else adds
        levels.append(adds)
    return levels


def merged(per_output: list[list[list[int]]]) -> list[tuple[int, int]]:
    depth = max((len(levels) for levels in per_output), default=0)
    ranges = []
    for level in range(depth):
        values = [v for levels in per_output if len(levels) > level for v in levels[level]]
        ranges.append((min(values), max(values)))
    return ranges


def brute_force_ranges(module: nn.Module, x: torch.Tensor, w: torch.Tensor) -> list[tuple[int, int]]:
    """Every output's tree, one output at a time, from explicitly indexed input patches."""
    trees = []
    if isinstance(module, nn.Linear):
        for row, weights in itertools.product(x.tolist(), w.tolist()):
            trees.append(python_tree([wi * xi for wi, xi in zip(weights, row, strict=True) if wi != 0]))
        return merged(trees)
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    if module.padding == "same":
        ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2  # odd kernels: the same on both sides
    else:
        ph, pw = module.padding
    xp = F.pad(x, (pw, pw, ph, ph)).tolist()
    c_in, c_out = w.shape[1], w.shape[0]
    per_group = c_out // module.groups
    out_h = (len(xp[0][0]) - dh * (kh - 1) - 1) // sh + 1
    out_w = (len(xp[0][0][0]) - dw * (kw - 1) - 1) // sw + 1
    weights = w.tolist()
    for n, c, oy, ox in itertools.product(range(len(xp)), range(c_out), range(out_h), range(out_w)):
        group = c // per_group
        terms = []
        for ci, ky, kx in itertools.product(range(c_in), range(kh), range(kw)):
            weight = weights[c][ci][ky][kx]
            if weight != 0:
                terms.append(weight * xp[n][group * c_in + ci][oy * sh + ky * dh][ox * sw + kx * dw])
        trees.append(python_tree(terms))
    return merged(trees)


def random_codes(shape, low, high, zeros, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(low, high + 1, shape, generator=g).double()
    return codes * (torch.rand(shape, generator=g) >= zeros).double()


def test_hand_computed_linear_levels():
    # channel 0 adds [30, -40, -150, 40, 480] and [-3, 2, -5, -1, -4]: level 1 -10, -110 (480 passes
    # up) and -1, -6; level 2 -120 (480 passes up) and -7; level 3 360 and -11. Channel 1 (k = 2): 130
    # and -2 at level 1. Channel 2 has one non-zero weight: no add.
    w = torch.tensor([[3, -2, 5, 1, 4], [1, 0, 0, 0, 1], [0, 0, 7, 0, 0]], dtype=torch.float64)
    x = torch.tensor([[10, 20, -30, 40, 120], [-1, -1, -1, -1, -1]], dtype=torch.float64)
    assert layer_tree_ranges(nn.Linear(5, 3), x, w) == [(-110, 130), (-120, -7), (-11, 360)]

    model = nn.Sequential(nn.Linear(5, 3, bias=True))
    set_int_weight(model[0], torch.ones(1), w)
    attach(model[0], ActQuantizer(8, True, "lsq", scale=torch.ones(1)))
    specs = {"0": {"weight": {"format": "int", "bits": 8, "per_channel": False}}}
    assert simulate_tree(model, specs, [(x.float(), None)]) == {"0": [9, 8, 10]}  # the bias is not in it


def test_hand_computed_conv_levels():
    # the 2x2 kernel [[1, 2], [3, 0]] has k = 3 terms; on [[1, 2, 3], [4, 5, 6]] its two outputs add
    # [1, 4, 12] -> 5 then 17, and [2, 6, 15] -> 8 then 23
    conv = nn.Conv2d(1, 1, 2, bias=False)
    w = torch.tensor([[[[1, 2], [3, 0]]]], dtype=torch.float64)
    x = torch.tensor([[[[1, 2, 3], [4, 5, 6]]]], dtype=torch.float64)
    assert layer_tree_ranges(conv, x, w) == [(5, 8), (17, 23)]
    assert [bits_for_range(*r) for r in layer_tree_ranges(conv, x, w)] == [5, 6]


LAYERS = {  # (layer, input shape)
    "conv stride 2, padding 1, 2 groups": (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 5, 5)),
    "depthwise, dilation 2, same padding": (
        nn.Conv2d(3, 3, 3, padding="same", dilation=2, groups=3),
        (2, 3, 4, 4),
    ),
    "dense 2x1 conv, padding (1, 0)": (nn.Conv2d(3, 4, (2, 1), padding=(1, 0)), (1, 3, 3, 4)),
    "linear": (nn.Linear(7, 5), (3, 7)),
}


@pytest.mark.parametrize("label", LAYERS)
def test_simulated_ranges_equal_a_per_output_python_tree(label):
    module, input_shape = LAYERS[label]
    w = random_codes(module.weight.shape, -8, 7, zeros=0.3, seed=1)
    x = random_codes(input_shape, -20, 20, zeros=0.1, seed=2)
    expected = brute_force_ranges(module, x, w)
    assert len(expected) >= 2
    assert layer_tree_ranges(module, x, w) == expected
    assert layer_tree_ranges(module, x, w, chunk_elements=7) == expected  # one image, one channel a chunk


class IntNet(nn.Module):
    """A depthwise conv (int), a grouped conv (ternary) and a linear (int), each with integer inputs."""

    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(2, 2, 3, padding=1, groups=2, bias=False)
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2, bias=False)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(torch.relu(self.dw(x)))).flatten(1))


def test_simulate_tree_proves_every_integer_layer_on_its_real_inputs():
    model = IntNet()
    specs = {}
    for name, seed in (("dw", 3), ("fc", 4)):
        module = model.get_submodule(name)
        set_int_weight(module, torch.full((1,), 0.05), random_codes(module.weight.shape, -8, 7, 0.2, seed))
        specs[name] = {"weight": {"format": "int", "bits": 4, "per_channel": False}}
    with torch.no_grad():
        sign = random_codes(model.conv.weight.shape, -1, 1, 0.0, 5)
        model.conv.weight.copy_(torch.where(sign > 0, 0.3, torch.where(sign < 0, -0.2, 0.0)))
    specs["conv"] = {"weight": {"format": "ternary", "bits": 2, "wp": 0.3, "wn": 0.2}}
    for name, signed in (("dw", True), ("conv", False), ("fc", False)):
        attach(model.get_submodule(name), ActQuantizer(6, signed, "lsq", scale=torch.full((1,), 0.1)))
    images = [(torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(i)), None) for i in range(2)]

    inputs = {name: [] for name in specs}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda m, args, _n=name: inputs[_n].append(m.act_quant.codes(args[0]).double())
        )
        for name in specs
    ]
    with torch.no_grad():
        for x, _ in images:
            model(x)
    for hook in hooks:
        hook.remove()

    widths = simulate_tree(model, specs, images, max_batches=2)
    for name, module in ((n, model.get_submodule(n)) for n in specs):
        w = torch.sign(module.weight.detach()).double()
        if name != "conv":
            w = torch.round(module.weight.detach() / module.weight_scale).double()
        expected = brute_force_ranges(module, torch.cat(inputs[name]), w)
        assert widths[name] == [bits_for_range(*r) for r in expected], name
    assert simulate_tree(model, specs, images, max_batches=1)["fc"] <= widths["fc"]


def test_sums_beyond_float64_exact_integers_are_refused():
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    set_int_weight(model[0], torch.ones(1), torch.full((2, 4), 2.0**50))
    attach(model[0], ActQuantizer(8, True, "lsq", scale=torch.ones(1)))
    specs = {"0": {"weight": {"format": "int", "bits": 8}}}
    with pytest.raises(RuntimeFailure, match="beyond float64's exact 2\\^53"):
        simulate_tree(model, specs, [(torch.ones(1, 4), None)])


@pytest.fixture(scope="module")
def fp_artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("tree") / "fp.safetensors", "test-cnn", ARCH)


def test_cli_writes_tree_widths_no_wider_than_the_whole_sum(fp_artifact, tmp_path, run_cli):
    out = tmp_path / "tree.safetensors"
    run = run_cli(
        "quantize", fp_artifact, "-d", DATA, "--ptq", "-w", "8", "-a", "8", "--accumulator-tree",
        "--accumulator-bits", "31", "--accumulator-batches", "1", "-o", out, "--json",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert "tree widths proved for 4 layers (levels 1.." in run.err
    assert run.json["accumulator_tree_layers"] == 4
    bundle = load_bundle(out)
    assert bundle.manifest["params"]["accumulator_tree"] is True
    for name, spec in bundle.specs.items():
        weight = bundle.model.get_submodule(name).weight.detach()
        k_max = int((weight.reshape(weight.shape[0], -1) != 0).sum(1).max())
        assert spec["acc_tree"] == [int(b) for b in spec["acc_tree"]]
        assert len(spec["acc_tree"]) == math.ceil(math.log2(k_max)), name
        # every tree node sums a subset of the products, so it lies within the whole sum's bounds
        assert max(spec["acc_tree"]) <= spec["acc_bits_needed"], name


def test_cli_without_integer_layers_is_bad_input(fp_artifact, tmp_path, run_cli):
    out = tmp_path / "x.safetensors"
    run = run_cli(
        "quantize", fp_artifact, "-d", DATA, "--ptq", "-w", "8", "-a", "32", "--accumulator-tree", "-o", out
    )
    assert run.code == 2 and "--accumulator-tree: no layer has integer weights" in run.err
    assert not out.exists()
