"""The `proxylessnas` and `ec2t` checkpoint layouts against reference networks written here.

Neither source is on PyPI, so each is re-implemented below, test-only, from reading its code: the same
module names (hence state-dict keys) and the same forward order. ProxylessNAS' network is built from a
net.config dict as ProxylessNASNets.build_from_config builds it; EC2T's CIFAR MicroNet from its depth
and width multipliers. Random weights and BN statistics, eval mode, saved the way the sources save
them, read with `read_state_dict`, converted, loaded strictly into our model: the logits must be equal.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mncli.errors import BadInput
from mncli.models import create_model
from mncli.models.checkpoint import fit_state_dict, read_state_dict
from mncli.models.layouts import detect_layouts, get_layout

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights (scaled by fan-in), biases, BN affine and running statistics; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.dtype.is_floating_point:
                tensor.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                scale = 1 / math.sqrt(math.prod(tensor.shape[1:])) if tensor.dim() > 1 else 0.5
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    return model.eval()


def import_and_compare(path, reference: nn.Module, config: dict | None, layout: str):
    """Read `path`, convert it with `layout`, build our model, load it strictly; both models' logits."""
    state, _ = read_state_dict(path)
    assert [found.name for found in detect_layouts(state)] == [layout]
    converted = get_layout(layout).convert(state, copy.deepcopy(config))
    ours = create_model(converted.arch, **converted.args)
    fit_state_dict(ours, converted.state, converted.arch)
    with torch.no_grad():
        expected, got = reference(IMAGES), ours.eval()(IMAGES)
    assert torch.isfinite(expected).all() and expected.std() > 0
    return converted, expected, got


# ---- ProxylessNAS (mit-han-lab/proxylessnas: proxyless_nas/nas_modules.py, layers.py) ---------------------


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = OrderedDict(
        conv=nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        bn=nn.BatchNorm2d(c_out),
    )
    if act:
        layers["act"] = nn.ReLU6(inplace=True)
    return nn.Sequential(layers)


class RefMBInvertedConv(nn.Module):
    """MBInvertedConvLayer: optional 1x1 `inverted_bottleneck`, `depth_conv`, linear 1x1 `point_linear`."""

    def __init__(self, cfg: dict):
        super().__init__()
        c_in, ratio, kernel = cfg["in_channels"], cfg["expand_ratio"], cfg["kernel_size"]
        hidden = cfg.get("mid_channels") or round(c_in * ratio)
        self.inverted_bottleneck = conv_bn(c_in, hidden, 1) if ratio != 1 else None
        hidden = hidden if ratio != 1 else c_in
        self.depth_conv = conv_bn(hidden, hidden, kernel, cfg["stride"], groups=hidden)
        self.point_linear = conv_bn(hidden, cfg["out_channels"], 1, act=False)

    def forward(self, x):
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class RefZeroLayer(nn.Module):
    """No parameters; its block passes the input through."""


class RefBlock(nn.Module):
    """MobileInvertedResidualBlock: a ZeroLayer block returns x, else conv(x), plus shortcut(x) if any."""

    def __init__(self, cfg: dict):
        super().__init__()
        conv = cfg["mobile_inverted_conv"]
        self.zero = conv["name"] == "ZeroLayer"
        self.mobile_inverted_conv = RefZeroLayer() if self.zero else RefMBInvertedConv(conv)
        self.shortcut = nn.Identity() if cfg["shortcut"] is not None else None

    def forward(self, x):
        if self.zero:
            return x
        out = self.mobile_inverted_conv(x)
        return out if self.shortcut is None else self.shortcut(x) + out


class RefLinearLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.dropout = nn.Dropout(cfg["dropout_rate"])
        self.linear = nn.Linear(cfg["in_features"], cfg["out_features"])

    def forward(self, x):
        return self.linear(self.dropout(x))


class RefProxylessNASNets(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        first, mix = cfg["first_conv"], cfg["feature_mix_layer"]
        self.first_conv = conv_bn(first["in_channels"], first["out_channels"], 3, first["stride"])
        self.blocks = nn.ModuleList(RefBlock(block) for block in cfg["blocks"])
        self.feature_mix_layer = conv_bn(mix["in_channels"], mix["out_channels"], 1) if mix else None
        self.global_avg_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = RefLinearLayer(cfg["classifier"])
        for module in self.modules():  # set_bn_param
            if isinstance(module, nn.BatchNorm2d):
                module.momentum, module.eps = cfg["bn"]["momentum"], cfg["bn"]["eps"]

    def forward(self, x):
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        if self.feature_mix_layer is not None:
            x = self.feature_mix_layer(x)
        x = self.global_avg_pooling(x)
        return self.classifier(x.view(x.size(0), -1))


def conv_layer(c_in: int, c_out: int, kernel: int, stride: int) -> dict:
    return {
        "name": "ConvLayer", "kernel_size": kernel, "stride": stride, "dilation": 1, "groups": 1,
        "bias": False, "has_shuffle": False, "in_channels": c_in, "out_channels": c_out, "use_bn": True,
        "act_func": "relu6", "dropout_rate": 0, "ops_order": "weight_bn_act",
    }  # fmt: skip


def net_config(stem: int, blocks: list, head: int, classes: int, dropout: float = 0.0) -> dict:
    """A net.config in the layout ProxylessNAS writes it; `blocks` holds (kernel, stride, expand,
    channels[, mid_channels]) or "zero". Shortcuts as in its configs: identity where stride is 1 and the
    channels stay, except on the first block."""
    entries, channels = [], stem
    for index, block in enumerate(blocks):
        if block == "zero":
            conv, out = {"name": "ZeroLayer", "stride": 1}, channels
        else:
            kernel, stride, expand, out, *mid = block
            conv = {
                "name": "MBInvertedConvLayer", "in_channels": channels, "out_channels": out,
                "kernel_size": kernel, "stride": stride, "expand_ratio": expand,
            }  # fmt: skip
            if mid:
                conv["mid_channels"] = mid[0]
        identity = index > 0 and (block == "zero" or (block[1] == 1 and out == channels))
        shortcut = {
            "name": "IdentityLayer", "in_channels": channels, "out_channels": channels, "use_bn": False,
            "act_func": None, "dropout_rate": 0, "ops_order": "weight_bn_act",
        }  # fmt: skip
        entries.append(
            {"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": conv,
             "shortcut": shortcut if identity else None}
        )  # fmt: skip
        channels = out
    return {
        "name": "ProxylessNASNets",
        "bn": {"momentum": 0.1, "eps": 0.001},
        "first_conv": conv_layer(3, stem, 3, 2),
        "feature_mix_layer": conv_layer(channels, head, 1, 1),
        "classifier": {
            "name": "LinearLayer", "in_features": head, "out_features": classes, "bias": True,
            "use_bn": False, "act_func": None, "dropout_rate": dropout, "ops_order": "weight_bn_act",
        },
        "blocks": entries,
    }  # fmt: skip


SMALL_BLOCKS = [(3, 1, 1, 8), (5, 2, 6, 16), (7, 1, 3, 16), "zero", (3, 1, 6, 24)]

# The released nets' configs (han-cai/files proxylessnas/proxyless_{mobile,cpu}.config), block by block.
PROXYLESS_MOBILE = [
    (3, 1, 1, 16), (5, 2, 3, 32), (3, 1, 3, 32), "zero", "zero", (7, 2, 3, 40), (3, 1, 3, 40), (5, 1, 3, 40),
    (5, 1, 3, 40), (7, 2, 6, 80), (5, 1, 3, 80), (5, 1, 3, 80), (5, 1, 3, 80), (5, 1, 6, 96), (5, 1, 3, 96),
    (5, 1, 3, 96), (5, 1, 3, 96), (7, 2, 6, 192), (7, 1, 6, 192), (7, 1, 3, 192), (7, 1, 3, 192),
    (7, 1, 6, 320),
]  # fmt: skip
PROXYLESS_CPU = [
    (3, 1, 1, 24), (3, 2, 6, 32), (3, 1, 3, 32), (3, 1, 3, 32), (3, 1, 3, 32), (3, 2, 6, 48), (3, 1, 3, 48),
    (3, 1, 3, 48), (5, 1, 3, 48), (3, 2, 6, 88), "zero", "zero", (3, 1, 3, 88), (5, 1, 6, 104),
    (3, 1, 3, 104), (3, 1, 3, 104), (3, 1, 3, 104), (5, 2, 6, 216), (5, 1, 3, 216), (5, 1, 3, 216),
    (3, 1, 3, 216), (5, 1, 6, 360),
]  # fmt: skip


def save_proxyless(path, cfg: dict, seed: int = 0) -> nn.Module:
    """The reference network, saved as RunManager.save_model writes model_best.pth.tar."""
    reference = randomise(RefProxylessNASNets(cfg), seed)
    torch.save({"state_dict": reference.state_dict()}, path)
    return reference


def test_proxylessnas_small_net_gives_identical_logits(tmp_path):
    cfg = net_config(16, SMALL_BLOCKS, head=64, classes=10, dropout=0.1)
    reference = save_proxyless(tmp_path / "model_best.pth.tar", cfg)
    converted, expected, got = import_and_compare(
        tmp_path / "model_best.pth.tar", reference, cfg, "proxylessnas"
    )
    assert torch.equal(expected, got)
    assert converted.arch == "mbconv"
    assert converted.args["blocks"] == [
        "ir_r1_k3_s1_e1_c8", "ir_r1_k5_s2_e6_c16", "ir_r1_k7_s1_e3_c16", "zero", "ir_r1_k3_s1_e6_c24"
    ]  # fmt: skip
    args = converted.args
    assert (args["stem_channels"], args["stem_stride"], args["head_channels"]) == (16, 2, 64)
    assert (args["bn_eps"], args["bn_momentum"], args["dropout"], args["num_classes"]) == (1e-3, 0.1, 0.1, 10)
    assert "blocks.3.expand.weight" in converted.state  # the zero block takes no index of ours


def test_proxylessnas_mid_channels_become_the_expansion_that_gives_them(tmp_path):
    cfg = net_config(16, [(3, 1, 1, 8), (5, 2, 6, 16, 40), (3, 1, 3, 16)], head=32, classes=5)
    reference = save_proxyless(tmp_path / "model_best.pth.tar", cfg, seed=3)
    converted, expected, got = import_and_compare(
        tmp_path / "model_best.pth.tar", reference, cfg, "proxylessnas"
    )
    assert torch.equal(expected, got)
    assert converted.args["blocks"][1] == "ir_r1_k5_s2_e5_c16"  # 40 = 8 * 5 hidden channels
    assert any("mid_channels 40" in note for note in converted.notes)


def test_proxylessnas_checkpoint_without_num_batches_tracked_imports(tmp_path):
    """Checkpoints of PyTorch before 0.4.1 have no BN num_batches_tracked (it only counts training steps)."""
    cfg = net_config(16, SMALL_BLOCKS, head=64, classes=10)
    reference = randomise(RefProxylessNASNets(cfg), seed=4)
    old = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": old}, tmp_path / "old.pth")
    _, expected, got = import_and_compare(tmp_path / "old.pth", reference, cfg, "proxylessnas")
    assert torch.equal(expected, got)


@pytest.mark.parametrize(("name", "stem", "blocks", "head"), [
    ("proxyless_mobile", 32, PROXYLESS_MOBILE, 1280),
    ("proxyless_cpu", 40, PROXYLESS_CPU, 1432),
])  # fmt: skip
def test_proxylessnas_released_configs_map_onto_mbconv(tmp_path, name, stem, blocks, head):
    cfg = net_config(stem, blocks, head=head, classes=1000)
    reference = save_proxyless(tmp_path / f"{name}.pth", cfg)
    converted, expected, got = import_and_compare(tmp_path / f"{name}.pth", reference, cfg, "proxylessnas")
    assert torch.equal(expected, got)
    assert converted.args["blocks"].count("zero") == 2 and len(converted.args["blocks"]) == 22
    assert converted.args["input_size"] == 224


def small_state(cfg: dict) -> dict:
    return RefProxylessNASNets(cfg).state_dict()


def refusal(layout: str, state: dict, cfg: dict | None) -> str:
    with pytest.raises(BadInput) as caught:
        get_layout(layout).convert(state, cfg)
    assert "\n" not in caught.value.message
    return caught.value.message


def test_proxylessnas_needs_its_net_config():
    cfg = net_config(16, SMALL_BLOCKS, head=64, classes=10)
    with pytest.raises(BadInput) as caught:
        get_layout("proxylessnas").convert(small_state(cfg), None)
    assert "net.config" in caught.value.message and "net.config" in caught.value.hint
    assert "net.config" in get_layout("proxylessnas").config_help


def test_proxylessnas_config_that_disagrees_with_the_state_names_the_key():
    cfg = net_config(16, SMALL_BLOCKS, head=64, classes=10)
    state = small_state(cfg)
    other = copy.deepcopy(cfg)
    other["blocks"][1]["mobile_inverted_conv"]["kernel_size"] = 3
    key = "blocks.1.mobile_inverted_conv.depth_conv.conv.weight"
    assert (
        refusal("proxylessnas", state, other)
        == f"{key} is [48, 1, 5, 5] in the checkpoint but [48, 1, 3, 3] by net.config"
    )
    other = copy.deepcopy(cfg)
    other["classifier"]["out_features"] = 100
    assert refusal("proxylessnas", state, other).startswith("classifier.linear.weight is [10, 64]")
    state["blocks.3.mobile_inverted_conv.depth_conv.conv.weight"] = torch.zeros(1)
    assert "blocks.3.mobile_inverted_conv" in refusal("proxylessnas", state, cfg)


def test_proxylessnas_what_mbconv_cannot_build_is_refused_naming_the_block():
    cfg = net_config(16, [(3, 1, 1, 8), (5, 2, 6, 20), (3, 1, 3, 20)], head=64, classes=10)
    assert "blocks.1: 20 channels" in refusal("proxylessnas", {}, cfg)
    cfg = net_config(16, SMALL_BLOCKS, head=64, classes=10)
    cfg["blocks"][2]["shortcut"] = None  # stride 1, 16 -> 16: mbconv would add a residual
    assert refusal("proxylessnas", {}, cfg).startswith(
        "net.config blocks.2 (16->16 channels, stride 1) has no"
    )
    cfg = net_config(16, SMALL_BLOCKS, head=64, classes=10)
    cfg["first_conv"]["act_func"] = "relu"
    assert "first_conv: act_func='relu'" in refusal("proxylessnas", {}, cfg)
    # han-cai/files proxylessnas/proxyless_cifar.config describes a PyramidTreeNet (tree cells, no MBConv)
    assert "PyramidTreeNet" in refusal("proxylessnas", {}, {"name": "PyramidTreeNet", "blocks": []})


# ---- EC2T (d-becking/neurips-2019-micronet-challenge: model/model.py, model_quantization/quantizer.py) ----


def ec2t_rounding(filters: int, multiplier: float) -> int:
    """EC2T's rounding_filters: scale, round to a multiple of 8, never more than 10 % down."""
    scaled = filters * multiplier
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


class RefBasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.dropout = nn.Dropout(0.2)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = self.dropout(self.relu(self.bn2(self.conv1(self.bn1(x)))))
        out = self.bn3(self.conv2(out))
        out += self.shortcut(x)
        return out


class RefMicroNet(nn.Module):
    """EC2T's `micronet(d_multiplier, w_multiplier)` for CIFAR: 3 stages of ceil(7 d) blocks."""

    def __init__(self, depth: float, width: float, num_classes: int = 100):
        super().__init__()
        blocks = int(math.ceil(depth * 7))
        widths = [ec2t_rounding(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c_in = widths[0]
        for stage, (c_out, stride) in enumerate(zip(widths, (1, 2, 2), strict=True), start=1):
            layers = []
            for index in range(blocks):
                layers.append(RefBasicBlock(c_in, c_out, stride if index == 0 else 1))
                c_in = c_out
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.linear = nn.Linear(widths[2], num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(F.relu(out), out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def test_ec2t_data_parallel_best_model_gives_identical_logits(tmp_path):
    reference = randomise(RefMicroNet(0.3, 0.5, num_classes=10), seed=5)
    # best_model.pt after a compound-scaling run on several GPUs: nn.DataParallel's `module.` keys
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, tmp_path / "best_model.pt")
    converted, expected, got = import_and_compare(tmp_path / "best_model.pt", reference, None, "ec2t")
    assert torch.equal(expected, got)
    assert converted.arch == "micronet-cifar" and converted.args["pool"] == "window"
    assert (converted.args["num_classes"], converted.args["in_channels"]) == (10, 3)
    ours = create_model("micronet-cifar", **converted.args)
    assert len(ours.layer1) == 3 and [ours.layer1[0].conv1.out_channels, ours.linear.in_features] == [8, 32]


def ternarize(model: nn.Module) -> dict:
    """EC2T's ternary state after training, as quantizer.train_quantization keeps it: the weights of
    every '.conv' layer overwritten with w_p, 0 or -w_n by nearest centroid; the centroids, latent
    full-precision copies and assignments beside them."""
    centroids, latent, assignments = [], [], []
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if ".conv" not in name:
                continue
            full = weight.detach().clone()
            w_p, w_n = full.max().abs() * 0.3, full.min().abs() * 0.3
            distances = torch.stack([(full + w_n) ** 2, full**2, (full - w_p) ** 2])
            assignment = distances.argmin(dim=0)
            weight.copy_(w_p * (assignment == 2).float() + (-w_n * (assignment == 0).float()))
            centroids.append(torch.tensor([w_p, w_n]).requires_grad_(True))
            latent.append(full.requires_grad_(True))
            assignments.append(assignment)
    return {"centroids": centroids, "fp_update": latent, "assignment_list": assignments}


def test_ec2t_ternary_checkpoint_imports_its_ternary_weights(tmp_path):
    reference = randomise(RefMicroNet(0.15, 0.6), seed=7)
    extras = ternarize(reference)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-4)
    torch.save(
        {
            "epoch": 3,
            "state_dict": reference.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "opt_fp_state_dict": torch.optim.Adam(extras["fp_update"]).state_dict(),
            "opt_sf_state_dict": torch.optim.Adam(extras["centroids"]).state_dict(),
            "best_acc": 71.5,
            **extras,
            "lambda_list": [0.0] * len(extras["centroids"]),
            "stop_quantizing_flag": 0,
        },
        tmp_path / "checkpoint.pt",
    )
    converted, expected, got = import_and_compare(tmp_path / "checkpoint.pt", reference, None, "ec2t")
    assert torch.equal(expected, got)
    assert any(note.startswith("12 of 12 block convs hold ternary values") for note in converted.notes)
    assert len(torch.unique(converted.state["layer2.1.conv2.weight"])) <= 3
    assert converted.state["conv1.weight"].unique().numel() > 3  # the stem stays full precision


def test_ec2t_winner_gives_identical_logits(tmp_path):
    """EC2T's CIFAR-100 entry, best_cifar_micronet (d = 1.4^3.5, w = 1.2^3.5), saved bare."""
    reference = randomise(RefMicroNet(1.4**3.5, 1.2**3.5), seed=11)
    torch.save(reference.state_dict(), tmp_path / "best.pt")
    converted, expected, got = import_and_compare(tmp_path / "best.pt", reference, None, "ec2t")
    assert torch.equal(expected, got)
    assert converted.notes[0].startswith("23 blocks per stage, widths [32, 64, 120]")


def test_ec2t_refuses_what_micronet_cifar_is_not():
    state = dict(RefMicroNet(0.15, 0.5).state_dict())
    assert refusal("ec2t", state, {"name": "x"}).startswith("the ec2t layout takes no side file")
    five = dict(state, **{"layer1.0.conv1.weight": torch.zeros(8, 8, 5, 5)})
    assert refusal("ec2t", five, None).startswith("layer1.0.conv1.weight is [8, 8, 5, 5] in the checkpoint")
    imagenet = dict(state, **{f"layer4.0.{k}": v for k, v in RefBasicBlock(32, 32, 1).state_dict().items()})
    assert "ImageNet MicroNet" in refusal("ec2t", imagenet, None)
    uneven = {k: v for k, v in state.items() if not k.startswith("layer2.1.")}
    assert refusal("ec2t", uneven, None).startswith("blocks per stage [2, 1, 2]")


# ---- detection ----------------------------------------------------------------------------------------


def detected(state: dict) -> list[str]:
    return [layout.name for layout in detect_layouts(state) if layout.name in ("proxylessnas", "ec2t")]


def test_detection_tells_the_two_layouts_and_our_own_apart():
    proxyless = small_state(net_config(16, SMALL_BLOCKS, head=64, classes=10))
    assert detected(proxyless) == ["proxylessnas"]
    assert detected(RefMicroNet(0.15, 0.5).state_dict()) == ["ec2t"]
    with torch.device("meta"):
        mbconv = create_model("mbconv", blocks=["ir_r1_k3_s1_e1_c16", "ir_r2_k3_s2_e6_c24"], head_channels=64)
        resnet = create_model("resnet20")  # conv1, bn1, layerX.Y.conv1/bn1/conv2/bn2, linear: no bn3
    assert detected(mbconv.state_dict()) == [] and detected(resnet.state_dict()) == []


def test_our_micronet_cifar_reads_as_ec2t_unchanged():
    """micronet-cifar has EC2T's key names, so its state dicts read as EC2T's: converting one keeps every
    tensor and finds the depth, width and classes that rebuild it (with EC2T's pooling, which our own
    model did not train with: the pool argument is ours to keep)."""
    ours = randomise(create_model("micronet-cifar", depth_mult=0.3, width_mult=0.75, num_classes=7), seed=2)
    state = ours.state_dict()
    converted = get_layout("ec2t").convert(state, None)
    assert all(converted.state[k] is v for k, v in state.items()) and len(converted.state) == len(state)
    rebuilt = create_model("micronet-cifar", **{**converted.args, "pool": "adaptive"})
    fit_state_dict(rebuilt, converted.state, "micronet-cifar")
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(IMAGES), ours(IMAGES))


def test_micronet_window_pool_scores_as_the_adaptive_one():
    from mncli.scoring import score_model

    scores = []
    for pool in ("adaptive", "window"):
        with torch.device("meta"):
            model = create_model("micronet-cifar", depth_mult=0.3, pool=pool)
        scores.append(score_model(model, {}, input_shape=(3, 32, 32)))
    keys = [k for k in scores[0] if isinstance(scores[0][k], int | float)]
    assert keys and all(scores[0][k] == scores[1][k] for k in keys)
