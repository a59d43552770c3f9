"""Baking ternary parametrizations: every layer holds at most {-wn, 0, +wp}, wn, wp > 0; specs agree."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mncli.artifact import codec
from mncli.artifact.codec import ternary_scales
from mncli.compress.prune.masks import kept_masks
from mncli.compress.ternary.common import attach, bake, ternary_specs
from mncli.compress.ternary.ec2t import EC2TWeight
from mncli.compress.ternary.ttq import MITTernaryWeight, TTQWeight
from mncli.errors import BadInput


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.conv(torch.relu(self.stem(x))))
        return self.fc(x.mean((2, 3)))


FACTORIES = {
    "ttq": lambda name, w, mask: TTQWeight(w, 0.05, mask),
    "mit": lambda name, w, mask: MITTernaryWeight(w, 0.7, mask),
    "ec2t": lambda name, w, mask: EC2TWeight(w, 0.45, 0.15, 1.0, mask),
}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), method=st.sampled_from(sorted(FACTORIES)), pruned=st.booleans())
def test_baked_layers_are_ternary(seed, method, pruned):
    torch.manual_seed(seed)
    model = Tiny()
    specs = {}
    if pruned:
        with torch.no_grad():
            model.conv.weight.mul_(torch.rand_like(model.conv.weight) > 0.4)
        specs["conv"] = {"weight": {"format": "float", "bits": 32}, "mask": True}
    masks = kept_masks(model, specs, ["conv", "fc"])
    pruned_zero = model.conv.weight.detach() == 0
    params = attach(model, ["conv", "fc"], lambda n, w: FACTORIES[method](n, w, masks.get(n)))
    x = torch.randn(2, 1, 6, 6)
    model(x).sum().backward()
    stats = bake(model, params)
    new_specs = ternary_specs(specs, stats, method, {"tag": 1})
    for name in ("conv", "fc"):
        weight = dict(model.named_modules())[name].weight
        assert isinstance(weight, nn.Parameter)
        weight_spec = new_specs[name]["weight"]
        assert weight_spec["format"] == "ternary" and weight_spec["wp"] > 0 and weight_spec["wn"] > 0
        ternary_scales(weight, weight_spec, name)  # BadInput unless only {-wn, 0, +wp}
        assert len(weight.unique()) <= 3
        spec = new_specs[name]
        assert spec["weight"]["bits"] == 2 and spec["method"] == method and spec["tag"] == 1
        assert spec["mask"] == bool((weight == 0).any())
    if pruned:
        assert (model.conv.weight[pruned_zero] == 0).all()
    # the deployable encoding (2-bit codes + mask + scales) decodes to exactly the baked values
    state = {k: v.detach() for k, v in model.state_dict().items()}
    encoded = codec.encode_state(state, new_specs)
    assert "conv.weight::codes" in encoded and "conv.weight" not in encoded
    decoded = codec.decode_state(encoded, new_specs)
    for key, value in state.items():
        assert torch.equal(decoded[key], value), key
    assert "parametrizations" not in dict(model.named_modules())["conv"].__dict__.get("_modules", {})
    assert set(model.state_dict()) == set(Tiny().state_dict())


def test_check_ternary_rejects_other_values():
    weight = torch.tensor([0.5, 0.0, -0.25, 0.3])
    with pytest.raises(BadInput, match="at most 3"):  # 0.3 is not a ternary value
        ternary_scales(weight, {"format": "ternary", "bits": 2, "wp": 0.5, "wn": 0.25}, "conv")
