import json

import pytest
from torch import nn

from mncli.compress.recipe import layer_roles, load_recipe, resolve_recipe, select_layers
from mncli.errors import BadInput


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.shortcut = nn.Conv2d(c, c, 1)
        self.se = nn.Module()
        self.se.reduce = nn.Conv2d(c, 2, 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3)
        self.block = Block(4)
        self.fc = nn.Linear(4, 10)


def test_roles_follow_naming_conventions():
    roles = layer_roles(Net())
    assert roles == {
        "stem": "stem",
        "block.conv1": "conv",
        "block.dw": "depthwise",
        "block.shortcut": "shortcut",
        "block.se.reduce": "se",
        "fc": "classifier",
    }


def test_default_selection_excludes_stem_and_classifier():
    net = Net()
    assert select_layers(net) == ["block.conv1", "block.dw", "block.shortcut", "block.se.reduce"]
    assert "block.dw" not in select_layers(net, include_depthwise=False)
    assert select_layers(net, exclude_roles=("stem", "classifier", "shortcut", "se")) == [
        "block.conv1",
        "block.dw",
    ]


def test_patterns_select_any_role_and_exclusions_remove():
    net = Net()
    assert select_layers(net, ["fc", "stem"]) == ["stem", "fc"]
    assert select_layers(net, ["block.*", "!block.se.*"]) == ["block.conv1", "block.dw", "block.shortcut"]
    with pytest.raises(BadInput, match="matches no layer"):
        select_layers(net, ["nothing*"])


def test_recipe_files_yaml_and_json(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text(
        "layers:\n  'block.*': {sparsity: 0.5}\n  block.conv1: {sparsity: 0.9}\n  fc: {sparsity: 0.1}\n"
    )
    recipe = load_recipe(y, {"sparsity"})
    per_layer = resolve_recipe(Net(), recipe, ["block.conv1"])
    assert per_layer["block.conv1"] == {"sparsity": 0.9}  # later pattern overrides
    assert per_layer["block.dw"] == {"sparsity": 0.5}
    assert per_layer["fc"] == {"sparsity": 0.1}  # naming the classifier includes it
    j = tmp_path / "r.json"
    j.write_text(json.dumps({"fc": {"bits": 4}}))
    assert load_recipe(j, {"bits"}) == {"fc": {"bits": 4}}


@pytest.mark.parametrize(
    "text, message",
    [
        ("layers: {'fc': {sparsity: 0.5, colour: red}}", "unknown key 'colour'"),
        ("layers: {}", "names no layer"),
        ("layers: [1, 2", "not valid"),
        ("layers: {'fc': 3}", "must be a mapping"),
    ],
)
def test_bad_recipes_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=message):
        load_recipe(path, {"sparsity"})


def test_recipe_pattern_matching_nothing(tmp_path):
    with pytest.raises(BadInput, match="matches no layer"):
        resolve_recipe(Net(), {"layer9.*": {"sparsity": 0.5}}, [])
    with pytest.raises(BadInput, match="not found"):
        load_recipe(tmp_path / "missing.yaml", {"sparsity"})
