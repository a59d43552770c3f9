"""Task constants and the score report: totals, baseline, conventions, accuracy and per-layer rows."""

from __future__ import annotations

from mncli.errors import BadInput
from mncli.scoring.rules import Options, Row
from mncli.storage import code_group

# Fixed normalisation constants of the MicroNet Challenge (never recomputed; SCORING.md).
TASKS = {
    "cifar100": {"baseline": "WideResNet-28-10", "params": 36.5e6, "ops": 10.49e9, "target": 80.0},
    "imagenet": {"baseline": "MobileNetV2-1.4 (224 px)", "params": 6.9e6, "ops": 1170e6, "target": 75.0},
}
OTHER_DATASETS = ("fashion-mnist", "mnist", "cifar10", "synthetic")
# Accuracy a model must reach for its score to count. Fashion-MNIST: the project's CPU track
# (BENCHMARKS.md: the best < 100K-parameter entry of the Fashion-MNIST benchmark table).
ACCURACY_TARGETS = {"cifar100": 80.0, "imagenet": 75.0, "fashion-mnist": 92.5}


def resolve_task(task: str) -> tuple[str, str]:
    """(constants used, label): other datasets are scored against the cifar100 constants, labelled so."""
    name = (task or "cifar100").lower()
    if name in TASKS:
        return name, name
    if name in OTHER_DATASETS:
        return "cifar100", f"{name} (scored against the cifar100 constants)"
    raise BadInput(f"unknown task {task!r}", hint="cifar100 or imagenet (or fashion-mnist, mnist, cifar10)")


def accuracy_block(test_accuracy: float | None, task: str) -> dict | None:
    """Recorded test accuracy (a fraction or a percentage) against the task's target, when it has one."""
    if test_accuracy is None:
        return None
    percent = float(test_accuracy) * 100 if float(test_accuracy) <= 1.0 else float(test_accuracy)
    target = ACCURACY_TARGETS.get(task)
    return {
        "test_top1": round(percent, 4),
        "target": target,
        "target_task": task,
        "meets_target": None if target is None else percent >= target,
    }


TERNARY_STORAGE = {
    "codes2": "official: 2 bits per non-zero code + a 1-bit mask, or 2 bits per code dense when smaller",
    "sign1": "EC2T's: a 1-bit mask + 1 sign bit per non-zero, or 2 bits per code dense when smaller",
    "dense2": "MIT's: 2 bits per code dense whatever the zeros",
}
ACCUMULATION = {
    "flat": "every add of a layer at one accumulator width (--add-bits, or the spec's acc_bits)",
    "tree": "binary adder tree: a dot product of k terms adds floor(k/2) pairs at level 1, then pairs "
    "of those, ...; level l at the spec's acc_tree[l-1] bits (the last repeats), the bias add at the "
    "last level's; layers without acc_tree flat",
}


FRACTIONAL_WEIGHTS = (
    "int weights of fractional bits b: a uniform grid of L = floor(2**b) levels, k codes packed as one "
    "base-L number of g = ceil(k*log2 L) bits; stored and charged ceil(n/k)*g bits dense, or "
    "ceil(nnz/k)*g + an n-bit mask sparse, whichever is smaller; mults at max(g/k, activation bits)"
)


def _fractional_layers(rows: list[Row]) -> dict[str, dict]:
    """Per layer of fractional int weights: its levels and how its codes are packed and charged."""
    layers: dict[str, dict] = {}
    for row in rows:
        if row.levels is not None and row.name not in layers:
            k, g = code_group(row.levels)
            layers[row.name] = {
                "weight_format": row.weight_format,
                "levels": row.levels,
                "codes_per_group": k,
                "group_bits": g,
                "bits_per_code": g / k,
            }
    return layers


def _tree_layers(rows: list[Row]) -> set[str]:
    return {r.name for r in rows if r.tree is not None}


def _untreed_int_layers(rows: list[Row]) -> list[str]:
    """Integer layers counted flat under tree accumulation: their specs prove no tree widths."""
    names = {r.name for r in rows if r.tree is None and (r.weight_format or "").startswith("int")}
    return sorted(names)


def conventions(opts: Options, rows: list[Row]) -> dict:
    """The conventions the report counted by; `fractional_weights` and `fractional_layers` only when a
    layer has int weights of fractional bits."""
    out = {
        "rules": "MicroNet Challenge final rules (2019-09): mults and adds counted separately, per example",
        "params": "16-bit freebie (params and mults at 16 bits)"
        if opts.freebie16
        else "each value at its bits",
        "mults": "weighted by max(weight bits, input activation bits)/32"
        + ("; 16 bits with the freebie" if opts.freebie16 else ""),
        "add_bits": opts.add_bits,
        "add_bits_is_claim": opts.add_bits < 32,
        "activation_mults": "activations, pooling and gates at the bits of their inputs: 16 for what fp16 "
        "layers (fp16 weights and 16-bit inputs) computed or float16 tensors, else 32",
        "sparse_storage": "each weight tensor stored and charged in the smaller form: dense n*bits, or "
        "sparse nnz*bits + a 1-bit mask over all n (each row's storage says which); biases dense",
        "batch_norm": "a bias: c values, one add per element; a conv bias followed by BN merges into it",
        "ternary_storage": opts.ternary_storage,
        "ternary_storage_rule": TERNARY_STORAGE[opts.ternary_storage],
        "ternary_mults": opts.ternary_mults,
        "accumulation": opts.accumulation,
        "accumulation_rule": ACCUMULATION[opts.accumulation],
        "tree_layers": len(_tree_layers(rows)),
        "activation_quantizers": "scales counted as parameters; the rescale is folded into the layer",
        "relu6_hardtanh": "booked as relu (1 mult per element)",
        "pooling": "max pool comparisons booked as adds",
        "constant_ops": "ops on weights and constants only are folded at deployment (free)",
    }
    fractional = _fractional_layers(rows)
    if fractional:
        out["fractional_weights"] = FRACTIONAL_WEIGHTS
        out["fractional_layers"] = fractional
    return out


def _tree_dict(row: Row) -> dict | None:
    tree = row.tree
    if tree is None:
        return None
    return {
        "terms": tree.terms,
        "levels": [{"adds": adds, "bits": bits} for adds, bits in tree.levels],
        "bias": None if tree.bias is None else {"adds": tree.bias[0], "bits": tree.bias[1]},
    }


def layer_dict(row: Row) -> dict:
    return {
        "name": row.name,
        "type": row.type,
        "op": row.op,
        "shape": list(row.shape),
        "params": row.params,
        "mults": row.mults,
        "adds": row.adds,
        "sparsity": row.sparsity,
        "weight_format": row.weight_format,
        "weight_bits": row.weight_bits,
        "act_bits": row.act_bits,
        "storage": row.storage,
        "storage_bits": row.param_bits,
        "raw_params": row.raw_params,
        "raw_mults": row.raw_mults,
        "raw_adds": row.raw_adds,
        "mult_bits": row.mult_bits,
        "add_bits": row.add_bits,
        "add_tree": _tree_dict(row),
    }


def build_report(
    rows: list[Row],
    *,
    task: str,
    opts: Options,
    input_shape: tuple[int, ...],
    test_accuracy: float | None = None,
    verified: bool = True,
    warnings: list[str] | None = None,
) -> dict:
    constants, label = resolve_task(task)
    base = TASKS[constants]
    bits = sum(r.param_bits for r in rows)
    params = bits / 32
    mults = sum(r.mults for r in rows)
    adds = sum(r.adds for r in rows)
    ops = mults + adds
    claims = []
    if opts.add_bits < 32:
        claims.append(
            f"additions counted at {opts.add_bits} bits: a claim that the model accumulates in them"
        )
    for row in rows:
        if row.tree is not None:
            widths = "/".join(str(bits) for _, bits in row.tree.levels) or "no levels"
            claims.append(f"{row.name}: adder tree at {widths} bits per level (spec acc_tree, proved)")
        elif row.add_bits < opts.add_bits:
            claims.append(f"{row.name}: {row.add_bits}-bit accumulator (spec acc_bits, overflow-checked)")
    warnings = list(warnings or [])
    untreed = _untreed_int_layers(rows) if opts.accumulation == "tree" else []
    if untreed:
        shown = ", ".join(untreed[:5]) + (", ..." if len(untreed) > 5 else "")
        warnings.append(f"{len(untreed)} layers have no proved tree widths (counted flat): {shown}")
    return {
        "params": params,
        "mults": mults,
        "adds": adds,
        "ops": ops,
        "score": params / base["params"] + ops / base["ops"],
        "params_score": params / base["params"],
        "ops_score": ops / base["ops"],
        "storage_bits": bits,
        "storage_mb": bits / 8 / 1e6,
        "raw": {
            "params": sum(r.raw_params for r in rows),
            "mults": sum(r.raw_mults for r in rows),
            "adds": sum(r.raw_adds for r in rows),
        },
        "task": {
            "name": constants,
            "label": label,
            "accuracy_target": ACCURACY_TARGETS.get((task or "cifar100").lower()),
        },
        "baseline": {"name": base["baseline"], "params": base["params"], "ops": base["ops"]},
        "input_shape": list(input_shape),
        "conventions": conventions(opts, rows),
        "claims": claims,
        "verified": verified,
        "warnings": warnings,
        "accuracy": accuracy_block(test_accuracy, (task or "cifar100").lower()),
        "layers": [layer_dict(r) for r in rows],
    }


def _si(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3f}{unit}"
    return f"{value:.0f}"


def summary(report: dict) -> str:
    """One line: score, params and ops against the baseline, task."""
    base = report["baseline"]
    line = (
        f"score {report['score']:.4g} = {_si(report['params'])} params / {_si(base['params'])} "
        f"+ {_si(report['ops'])} ops / {_si(base['ops'])} ({report['task']['label']})"
    )
    accuracy = report.get("accuracy")
    if accuracy and accuracy["target"] is not None:
        verdict = "meets" if accuracy["meets_target"] else "misses"
        line += f", top-1 {accuracy['test_top1']:.2f}% {verdict} {accuracy['target']:.1f}%"
    return line
