"""Baked models: weights on one uniform b-bit grid per scale, act quantizers with <= 2^b levels on real
batches, masks and ternary layers kept, and a round trip through the codec with identical logits."""

from pathlib import Path

import pytest
import torch

from mncli.artifact import codec
from mncli.compress.quant import qat
from mncli.compress.quant.plan import plan_layers
from mncli.compress.quant.ptq import observe_inputs
from mncli.models import create_model
from mncli.models.quantized import (
    WEIGHT_SCALE,
    ActQuantizer,
    act_quantized_layers,
    check_int_weight,
    install_act_quantizers,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def real_batches(
    n_batches: int = 2, batch: int = 32, size: int = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few Fashion-MNIST test images (resized to `size`), or seeded noise when the data is missing."""
    if (FMNIST / "t10k-images-idx3-ubyte.gz").exists():
        from mncli.data.formats import load_idx_pair

        images, labels = load_idx_pair(FMNIST, "t10k")
        x = images[: n_batches * batch].float().div(255.0)
        x = torch.nn.functional.interpolate(x.reshape(-1, 1, 28, 28), size=size, mode="bilinear")
        x = (x - 0.286) / 0.353
        y = labels[: n_batches * batch].long()
    else:
        g = torch.Generator().manual_seed(0)
        x, y = (
            torch.randn(n_batches * batch, 1, size, size, generator=g),
            torch.zeros(n_batches * batch).long(),
        )
    return [(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]) for i in range(n_batches)]


def quantized(name, method, weight_bits=4, act_bits=4, specs=None, steps=3, recipe=None, fp16=False, **arch):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, input_size=16, num_classes=10, **arch)
    specs = specs(model) if callable(specs) else {}
    plans = plan_layers(model, specs, weight_bits=weight_bits, act_bits=act_bits, recipe=recipe, fp16=fp16)
    batches = real_batches()
    modules = dict(model.named_modules())
    stats = observe_inputs(model, {n: modules[n] for n, p in plans.items() if p.int_act}, batches, 1)
    if method == "ptq":
        qat.prepare_ptq(model, plans, stats, "percentile", 99.9, specs)
    else:
        params = qat.prepare_qat(model, plans, stats, method, specs)
        opt = torch.optim.SGD(list(model.parameters()), lr=0.01, momentum=0.9, weight_decay=1e-4)
        model.train()
        for step in range(steps):
            x, y = batches[step % len(batches)]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            params.clamp_()
    new_specs = qat.bake(model, plans, specs)
    qat.apply_fp16(model, plans, new_specs)
    model.eval()
    return model, new_specs, plans, batches


@pytest.mark.parametrize("method", ["lsq", "pact", "dorefa", "ptq"])
def test_weights_lie_on_one_grid_per_scale(method):
    model, specs, plans, _ = quantized("test-mbconv", method)
    modules = dict(model.named_modules())
    int_layers = [n for n, s in specs.items() if s["weight"]["format"] == "int"]
    assert len(int_layers) == len(plans)
    for name in int_layers:
        module, bits = modules[name], specs[name]["weight"]["bits"]
        scale = getattr(module, WEIGHT_SCALE)
        check_int_weight(module.weight, scale, bits)  # exactly code * scale, codes in range
        if specs[name]["weight"]["per_channel"]:
            assert scale.numel() == module.weight.shape[0]
            for c in range(module.weight.shape[0]):
                assert torch.unique(module.weight[c]).numel() <= 2**bits
        assert torch.unique(module.weight).numel() <= 2**bits * scale.numel()
    roles_8bit = {"stem.conv", "classifier"}
    assert {n for n in int_layers if specs[n]["weight"]["bits"] == 8} == roles_8bit
    assert all(specs[n]["weight"]["per_channel"] == n.endswith(".dw") for n in int_layers)


@pytest.mark.parametrize("method", ["lsq", "pact", "ptq"])
def test_act_quantizers_emit_at_most_2_to_the_b_levels_on_real_batches(method):
    model, specs, _, batches = quantized("test-mbconv", method, act="relu")
    seen: dict[str, set] = {}
    handles = []
    for name, _, quantizer in act_quantized_layers(model):
        assert isinstance(quantizer, ActQuantizer)
        seen[name] = set()

        def hook(mod, args, out, _name=name):
            seen[_name].update(torch.unique(out).tolist())

        handles.append(quantizer.register_forward_hook(hook))
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for handle in handles:
        handle.remove()
    assert seen
    for name, levels in seen.items():
        bits = specs[name]["act"]["bits"]
        assert 1 <= len(levels) <= 2**bits, name
    assert max(len(levels) for levels in seen.values()) > 2
    # the stem sees the normalised image (negative values): signed; a layer after ReLU is not
    assert specs["stem.conv"]["act"]["signed"] is True
    assert any(not s["act"]["signed"] for s in specs.values() if "act" in s)


def test_masks_and_ternary_layers_are_kept():
    def earlier_stages(model):
        modules = dict(model.named_modules())
        with torch.no_grad():
            w = modules["conv2"].weight
            w[w.abs() < w.abs().median()] = 0.0  # pruned
            t = modules["conv3"].weight
            t.copy_(torch.where(t > 0.05, 0.2, torch.where(t < -0.05, -0.1, 0.0)))
        return {
            "conv2": {"mask": True},
            "conv3": {"weight": {"format": "ternary", "bits": 2, "wp": 0.2, "wn": 0.1}},
        }

    torch.manual_seed(0)
    before = create_model("test-cnn", in_channels=1, input_size=16, num_classes=10)
    earlier_stages(before)
    model, specs, _, _ = quantized("test-cnn", "lsq", specs=earlier_stages, steps=4)
    assert torch.equal(model.conv2.weight == 0, before.conv2.weight == 0)
    assert specs["conv2"]["mask"] is True and specs["conv2"]["weight"]["format"] == "int"
    assert torch.equal(model.conv3.weight, before.conv3.weight)
    assert specs["conv3"]["weight"]["format"] == "ternary" and specs["conv3"]["act"]["bits"] == 4


def test_round_trip_through_the_codec_gives_identical_logits():
    recipe = {"blocks.0.se.*": {"weight_bits": 32, "act_bits": 32}}
    model, specs, _, batches = quantized("test-mbconv", "lsq", recipe=recipe, fp16=True)
    assert specs["blocks.0.se.reduce"]["weight"] == {"format": "float", "bits": 16}
    assert specs["blocks.0.se.reduce"]["act"]["bits"] == 16
    tensors = codec.encode_state(model.state_dict(), specs)
    assert any(k.endswith("::codes") for k in tensors)
    assert tensors["blocks.0.se.reduce.weight"].dtype == torch.float16
    fresh = create_model("test-mbconv", in_channels=1, input_size=16, num_classes=10)
    install_act_quantizers(fresh, specs)
    fresh.load_state_dict(codec.decode_state(tensors, specs), strict=True)
    fresh.eval()
    x = batches[0][0]
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
