"""Which bits each layer gets: command-line defaults, first/last layer at 8 bits, recipe overrides, and
what earlier stages decided (ternary weights stay ternary; masks stay, see `qat`).

Bits: 2-8 are integer codes, 16 is IEEE half precision for real, 32 leaves the tensor as it is. Weights
may also have fractional bits between 2 and 8 (Distiller's ImageNet entry gave its last FC 2.5): a
uniform grid of floor(2**b) codes (mncli.storage.levels_for_bits), stored packed at the bits the score
charges; activations keep whole bits. A layer
whose input weights already are codes (ternary, or int with its `weight_scale`) keeps them unless the
plan gives it new integer bits: --fp16 never turns codes into fp16 values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from mncli.compress.recipe import compute_layers, layer_roles, resolve_recipe
from mncli.errors import BadInput

RECIPE_KEYS = ("weight_bits", "act_bits", "per_channel")
MIN_INT_BITS, MAX_INT_BITS = 2, 8
FIRST_LAST_BITS = 8


def is_int_bits(bits: float) -> bool:
    """Bits of integer codes: 2 to 8, fractional ones included."""
    return MIN_INT_BITS <= bits <= MAX_INT_BITS


def check_bits(value: object, what: str, fractional: bool = False) -> int | float:
    """2-8, 16 or 32 (an int), or with `fractional` a number strictly between 2 and 8 (a float: 2.5);
    anything else is BadInput."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if number and float(value).is_integer():
        bits = int(value)
        if is_int_bits(bits) or bits in (16, 32):
            return bits
        raise BadInput(
            f"{what} {bits} is not supported",
            hint="use 2-8 for integer codes, 16 for half precision or 32 to leave it in fp32",
        )
    if not number or not fractional:
        raise BadInput(
            f"{what} must be an integer number of bits, got {value!r}",
            hint="fractional bits (2.5) are for weights only" if number else None,
        )
    if not MIN_INT_BITS < value < MAX_INT_BITS:
        raise BadInput(
            f"{what} {value} is not supported: fractional bits lie between 2 and 8",
            hint="e.g. 2.5 bits: a grid of floor(2**2.5) = 5 levels",
        )
    return float(value)


@dataclass
class LayerPlan:
    weight_bits: int | float  # 2-8 int codes (fractional: floor(2**b) levels), 16 fp16, 32 unchanged
    act_bits: int  # 2-8 int codes, 16 fp16, 32 none
    per_channel: bool = False
    ternary: bool = False  # weights stay ternary; only the activations are quantized
    keep_int: bool = False  # the input's int weights stay as they are (no new integer bits planned)

    @property
    def int_weight(self) -> bool:
        return not self.ternary and is_int_bits(self.weight_bits)

    @property
    def keeps_codes(self) -> bool:
        """The weights are the input's ternary or int codes, kept (frozen while training)."""
        return self.ternary or self.keep_int

    @property
    def int_act(self) -> bool:
        return is_int_bits(self.act_bits)


def _first_last(bits: int | float, first_last_bits: int) -> int | float:
    # First and last layers get `first_last_bits` when the rest is quantized below it, else the same.
    return first_last_bits if is_int_bits(bits) and bits < first_last_bits else bits


def plan_layers(
    model: nn.Module,
    specs: dict[str, dict],
    *,
    weight_bits: int | float,
    act_bits: int,
    first_last_bits: int = FIRST_LAST_BITS,
    recipe: dict[str, dict] | None = None,
    fp16: bool = False,
) -> dict[str, LayerPlan]:
    """Per conv/linear layer plan, in model order."""
    weight_bits = check_bits(weight_bits, "--weight-bits", fractional=True)
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
            plan.weight_bits = check_bits(
                settings["weight_bits"], f"recipe weight_bits of {name}", fractional=True
            )
        if "act_bits" in settings:
            plan.act_bits = check_bits(settings["act_bits"], f"recipe act_bits of {name}")
        if "per_channel" in settings:
            if not isinstance(settings["per_channel"], bool):
                raise BadInput(f"recipe per_channel of {name} must be true or false")
            plan.per_channel = settings["per_channel"]
        spec = specs.get(name, {})
        weight_spec = spec.get("weight") or {}
        plan.ternary = weight_spec.get("format") == "ternary"
        plan.keep_int = weight_spec.get("format") == "int" and not is_int_bits(plan.weight_bits)
        if fp16:
            plan.weight_bits = 16 if plan.weight_bits == 32 and not plan.keeps_codes else plan.weight_bits
            plan.act_bits = 16 if plan.act_bits == 32 else plan.act_bits
        plans[name] = plan
    return plans
