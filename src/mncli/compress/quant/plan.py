"""Which bits each layer gets: command-line defaults, first/last layer at 8 bits, recipe overrides, and
what earlier stages decided (ternary weights stay ternary; masks stay, see `qat`).

Bits: 2-8 are integer codes, 16 is IEEE half precision for real, 32 leaves the tensor as it is. A layer
whose input weights already are codes (ternary, or int with its `weight_scale`) keeps them unless the
plan gives it new integer bits: --fp16 never turns codes into fp16 values.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mncli.compress.recipe import compute_layers, layer_roles, resolve_recipe
from mncli.errors import BadInput

RECIPE_KEYS = ("weight_bits", "act_bits", "per_channel")
INT_BITS = range(2, 9)
FIRST_LAST_BITS = 8


def check_bits(value: object, what: str) -> int:
    """2-8, 16 or 32; anything else is BadInput."""
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise BadInput(f"{what} must be an integer number of bits, got {value!r}")
    bits = int(value)
    if bits not in INT_BITS and bits not in (16, 32):
        raise BadInput(
            f"{what} {bits} is not supported",
            hint="use 2-8 for integer codes, 16 for half precision or 32 to leave it in fp32",
        )
    return bits


@dataclass
class LayerPlan:
    weight_bits: int  # 2-8 int codes, 16 fp16, 32 unchanged
    act_bits: int  # 2-8 int codes, 16 fp16, 32 none
    per_channel: bool = False
    ternary: bool = False  # weights stay ternary; only the activations are quantized
    keep_int: bool = False  # the input's int weights stay as they are (no new integer bits planned)

    @property
    def int_weight(self) -> bool:
        return not self.ternary and self.weight_bits in INT_BITS

    @property
    def keeps_codes(self) -> bool:
        """The weights are the input's ternary or int codes, kept (frozen while training)."""
        return self.ternary or self.keep_int

    @property
    def int_act(self) -> bool:
        return self.act_bits in INT_BITS


def _first_last(bits: int, first_last_bits: int) -> int:
    # First and last layers get `first_last_bits` when the rest is quantized below it, else the same.
    return first_last_bits if bits in INT_BITS and bits < first_last_bits else bits


def plan_layers(
    model: nn.Module,
    specs: dict[str, dict],
    *,
    weight_bits: int,
    act_bits: int,
    first_last_bits: int = FIRST_LAST_BITS,
    recipe: dict[str, dict] | None = None,
    fp16: bool = False,
) -> dict[str, LayerPlan]:
    """Per conv/linear layer plan, in model order."""
    weight_bits = check_bits(weight_bits, "--weight-bits")
    act_bits = check_bits(act_bits, "--act-bits")
    first_last_bits = check_bits(first_last_bits, "--first-last-bits")
    names = compute_layers(model)
    roles = layer_roles(model)
    overrides = resolve_recipe(model, recipe or {}, names)
    plans: dict[str, LayerPlan] = {}
    for name in names:
        edge = roles[name] in ("stem", "classifier")
        plan = LayerPlan(
            weight_bits=_first_last(weight_bits, first_last_bits) if edge else weight_bits,
            act_bits=_first_last(act_bits, first_last_bits) if edge else act_bits,
            per_channel=roles[name] == "depthwise",
        )
        settings = overrides.get(name, {})
        if "weight_bits" in settings:
            plan.weight_bits = check_bits(settings["weight_bits"], f"recipe weight_bits of {name}")
        if "act_bits" in settings:
            plan.act_bits = check_bits(settings["act_bits"], f"recipe act_bits of {name}")
        if "per_channel" in settings:
            if not isinstance(settings["per_channel"], bool):
                raise BadInput(f"recipe per_channel of {name} must be true or false")
            plan.per_channel = settings["per_channel"]
        spec = specs.get(name, {})
        weight_spec = spec.get("weight") or {}
        plan.ternary = weight_spec.get("format") == "ternary"
        plan.keep_int = weight_spec.get("format") == "int" and plan.weight_bits not in INT_BITS
        if fp16:
            plan.weight_bits = 16 if plan.weight_bits == 32 and not plan.keeps_codes else plan.weight_bits
            plan.act_bits = 16 if plan.act_bits == 32 else plan.act_bits
        plans[name] = plan
    return plans
