"""Distiller schedule YAML read as it is (compress/prune/distiller.py): a file shaped like the MicroNet
entry's pruning2.yaml read into per-layer targets and windows, lukemelas and `module.` names mapped
onto an EfficientNet imported from efficientnet_pytorch, AGP sparsity at every pruning step and the
LR of every epoch as Distiller computes them, and bad files refused with one line and exit 2."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import tiny_artifact

# The structure of IST-DASLab/dISTiller-micronet imagenet_efficientnet/schedules/pruning2.yaml (six
# AutomatedGradualPruners over DataParallel-prefixed lukemelas names, flow lists with trailing commas
# and blank lines, policies 0-20 every 2, ExponentialLR 0.9 over epochs 20-40), naming a few weights
# of an EfficientNet-B0 per pruner.
EFFICIENTNET_SCHEDULE = """\
# Per-group AGP targets for an EfficientNet (efficientnet_pytorch names, trained under DataParallel)

version: 1
pruners:
  low_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.25
    weights: ["module._blocks.0._depthwise_conv.weight",
    "module._blocks.1._depthwise_conv.weight",
"module._blocks.1._project_conv.weight",

"module._blocks.2._expand_conv.weight",
]

  mid_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.6
    weights: [
"module._blocks.9._expand_conv.weight",
"module._blocks.9._project_conv.weight"
]

  high_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.65
    weights: ["module._conv_head.weight",
"module._fc.weight"]

  higher_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.7
    weights: [
      "module._blocks.13._depthwise_conv.weight",

      "module._blocks.14._depthwise_conv.weight",
    ]

  _se_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.7
    weights: [
      "module._blocks.3._se_reduce.weight",
      "module._blocks.3._se_expand.weight",
    ]

  begin_pruner:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.3
    weights: ["module._conv_stem.weight", ]


lr_schedulers:
   pruning_lr:
     class: ExponentialLR
     gamma: 0.9


policies:
  - pruner:
      instance_name : low_pruner
    starting_epoch: 0
    ending_epoch: 20
    frequency: 2

  - pruner:
      instance_name : higher_pruner
    starting_epoch: 0
    ending_epoch: 20
    frequency: 2

  - pruner:
      instance_name : mid_pruner
    starting_epoch: 0
    ending_epoch: 20
    frequency: 2

  - pruner:
      instance_name : begin_pruner
    starting_epoch: 0
    ending_epoch: 20
    frequency: 2

  - pruner:
      instance_name : high_pruner
    starting_epoch: 0
    ending_epoch: 20
    frequency: 2

  - pruner:
      instance_name : _se_pruner
    starting_epoch: 0
    ending_epoch: 20
    frequency: 2

  - lr_scheduler:
      instance_name: pruning_lr
    starting_epoch: 20
    ending_epoch: 40
    frequency: 1
"""

# Our efficientnet-b0 layer of every weight the schedule names, with its pruner's final sparsity.
EFFICIENTNET_LAYERS = {
    "stem.conv": 0.3,
    "blocks.0.dw": 0.25,
    "blocks.1.dw": 0.25,
    "blocks.1.project": 0.25,
    "blocks.2.expand": 0.25,
    "blocks.3.se.reduce": 0.7,
    "blocks.3.se.expand": 0.7,
    "blocks.9.expand": 0.6,
    "blocks.9.project": 0.6,
    "blocks.13.dw": 0.7,
    "blocks.14.dw": 0.7,
    "head.conv": 0.65,
    "classifier": 0.65,
}

# Two pruners on the tiny CNN: `early` over epochs 0-4 every 2 (span 2: steps 0 and 2), `late` over
# epochs 1-6 every epoch (span 4: steps 1..5); ExponentialLR 0.5 over epochs 3-6. Names with and
# without DataParallel's prefix.
TWO_PRUNERS = """\
version: 1
pruners:
  early:
    class: AutomatedGradualPruner
    initial_sparsity: 0.05
    final_sparsity: 0.5
    weights: ["module.conv2.weight", ]
  late:
    class: AutomatedGradualPruner
    initial_sparsity: 0.1
    final_sparsity: 0.8
    weights: ["module.conv3.weight",
              "fc.weight",
    ]
lr_schedulers:
  decay:
    class: ExponentialLR
    gamma: 0.5
policies:
  - pruner: {instance_name: early}
    starting_epoch: 0
    ending_epoch: 4
    frequency: 2
  - pruner: {instance_name: late}
    starting_epoch: 1
    ending_epoch: 6
    frequency: 1
  - lr_scheduler: {instance_name: decay}
    starting_epoch: 3
    ending_epoch: 6
    frequency: 1
"""

# s(t) = s_f + (s_i - s_f) * (1 - (t - start) / span)^3, by hand.
LATE = {1: 0.1, 2: 0.8 - 0.7 * 0.75**3, 3: 0.8 - 0.7 * 0.5**3, 4: 0.8 - 0.7 * 0.25**3, 5: 0.8}
EXPECTED_STEPS = [
    (0, {"conv2": 0.05}),
    (1, {"conv3": LATE[1], "fc": LATE[1]}),
    (2, {"conv2": 0.5, "conv3": LATE[2], "fc": LATE[2]}),
    (3, {"conv3": LATE[3], "fc": LATE[3]}),
    (4, {"conv3": LATE[4], "fc": LATE[4]}),
    (5, {"conv3": 0.8, "fc": 0.8}),
]
# Distiller steps the scheduler with epoch=k+1 at the end of epochs k = 3, 4, 5: epoch 4 trains at
# gamma^4, epoch 5 at gamma^5.
EXPECTED_LR_FACTORS = [1.0, 1.0, 1.0, 1.0, 0.5**4, 0.5**5]

DATA = "synthetic:classes=4,shape=3x16x16,train=64,test=32"
ARGS = {"num_classes": 4, "input_size": 16}
FAST = ["--batch-size", "32", "--seed", "0", "--device", "cpu", "--json"]


@pytest.fixture
def efficientnet_b0(tmp_path_factory):
    """An efficientnet_pytorch B0 saved as a DataParallel checkpoint and imported with `mncli import`."""
    efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
    from mncli.cli.app import main

    folder = tmp_path_factory.mktemp("b0")
    torch.manual_seed(0)
    source = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0", num_classes=4)
    state = {f"module.{key}": value for key, value in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 40}, folder / "b0.pth.tar")
    out = folder / "b0.safetensors"
    assert main(["import", str(folder / "b0.pth.tar"), "-o", str(out), "-q"]) == 0
    return out


def _write(tmp_path, text: str, name: str = "schedule.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_pruning2_structure_reads_into_its_pruners_windows_and_lr_policy(tmp_path):
    from mncli.compress.prune.distiller import read_schedule

    schedule = read_schedule(_write(tmp_path, EFFICIENTNET_SCHEDULE))
    assert [p.name for p in schedule.pruners] == [
        "low_pruner", "mid_pruner", "high_pruner", "higher_pruner", "_se_pruner", "begin_pruner"
    ]  # fmt: skip
    assert {p.name: (p.initial, p.final) for p in schedule.pruners}["begin_pruner"] == (0.05, 0.3)
    assert {(p.window.start, p.window.end, p.window.freq) for p in schedule.pruners} == {(0, 20, 2)}
    assert schedule.pruners[0].weights[-1] == "module._blocks.2._expand_conv.weight"  # trailing comma
    assert schedule.pruners[-1].weights == ("module._conv_stem.weight",)
    (lr,) = schedule.lr_policies
    assert (lr.kind, lr.gamma, lr.window.start, lr.window.end, lr.window.freq) == (
        "ExponentialLR",
        0.9,
        20,
        40,
        1,
    )
    assert schedule.last_epoch == 40
    steps = schedule.pruners[0].schedule.steps()
    assert steps == list(range(0, 20, 2)) and schedule.pruners[0].schedule.span == 18
    # the LR holds through epoch 20, then epoch e trains at 0.9^e (Distiller's step(epoch=e))
    assert [schedule.lr_factor(e) for e in (0, 20, 21, 39)] == [1.0, 1.0, 0.9**21, 0.9**39]


def test_default_epochs_and_lr_schedule_come_from_the_file(tmp_path):
    from mncli.stages.prune import PruneConfig, Pruning
    from mncli.stages.training import TrainOptions

    method = Pruning(PruneConfig(recipe=_write(tmp_path, EFFICIENTNET_SCHEDULE)))
    options = method.options(TrainOptions.unset())
    assert (options.epochs, options.schedule, options.optimizer, options.lr) == (40, "constant", "sgd", 0.01)


def test_lukemelas_names_map_onto_an_imported_efficientnet_and_the_manifest_records_them(
    tmp_path, run_cli, efficientnet_b0
):
    from mncli.bundle import load_bundle

    schedule = _write(tmp_path, EFFICIENTNET_SCHEDULE)
    out = tmp_path / "pruned.safetensors"
    data = "synthetic:classes=4,shape=3x32x32,train=16,test=8"
    run = run_cli("prune", efficientnet_b0, "--recipe", schedule, "-d", data, "--epochs", "0", "-o", out,
                  *FAST)  # fmt: skip
    assert run.code == 0, run.err
    assert {name: row["target"] for name, row in run.json["layers"].items()} == EFFICIENTNET_LAYERS
    assert run.json["max_deviation_weights"] == 0
    bundle = load_bundle(out)
    record = bundle.manifest["compression"]["prune"]["schedule"]
    assert record["format"] == "distiller" and record["path"] == str(schedule)
    assert record["sha256"] == __import__("hashlib").sha256(schedule.read_bytes()).hexdigest()
    assert record["layers"]["blocks.9.expand"] == {
        "weight": "module._blocks.9._expand_conv.weight", "layout": "efficientnet-pytorch",
        "pruner": "mid_pruner", "initial_sparsity": 0.05, "final_sparsity": 0.6,
        "starting_epoch": 0, "ending_epoch": 20, "frequency": 2,
    }  # fmt: skip
    assert record["lr_policies"][0]["class"] == "ExponentialLR"
    assert bundle.specs["classifier"]["mask"] and bundle.specs["classifier"]["target_sparsity"] == 0.65


def test_two_pruners_follow_distillers_agp_formula_and_exponential_lr(tmp_path):
    from mncli.bundle import bundle_from_arch
    from mncli.compress.prune.masks import target_count
    from mncli.stages.compression import Run
    from mncli.stages.prune import PruneConfig, Pruning
    from mncli.stages.training import TrainOptions

    torch.manual_seed(0)
    bundle = bundle_from_arch("test-cnn", ARGS)
    method = Pruning(PruneConfig(recipe=_write(tmp_path, TWO_PRUNERS)))
    train = TrainOptions.unset(dataset=DATA, batch_size=32, device="cpu", seed=0)
    opts = method.options(train).with_fallbacks().validate()
    assert opts.epochs == 6  # the last ending_epoch
    specs: dict = {}
    method.check(bundle.model, specs, bundle.arch, opts)
    run = Run(model=bundle.model, specs=specs, arch=bundle.arch, data=opts.load_data(), options=opts)
    fits = []
    train_once = run.train
    run.train = lambda *args, **kwargs: fits.append(train_once(*args, **kwargs)) or fits[-1]
    result = method.apply(run)

    sizes = {
        name: m.weight.numel() for name, m in bundle.model.named_modules() if name in ("conv2", "conv3", "fc")
    }
    steps = run.record["pruning_steps"]
    assert [step["epoch"] for step in steps] == [epoch for epoch, _ in EXPECTED_STEPS]
    for step, (epoch, targets) in zip(steps, EXPECTED_STEPS, strict=True):
        expected = {n: round(target_count(s, sizes[n]) / sizes[n], 6) for n, s in targets.items()}
        assert step["layers"] == expected, epoch
    late_steps = run.record["schedule"]["pruners"]["late"]["steps"]
    assert [t for t, _ in late_steps] == list(LATE)
    assert [s for _, s in late_steps] == pytest.approx(list(LATE.values()), abs=1e-6)
    assert run.record["schedule"]["lr_factors"] == EXPECTED_LR_FACTORS
    (fit,) = fits
    assert [row["lr"] for row in fit.history] == pytest.approx([0.01 * f for f in EXPECTED_LR_FACTORS])
    assert {n: r["achieved"] for n, r in result["layers"].items()} == pytest.approx(
        {"conv2": 0.5, "conv3": 0.8, "fc": 0.8}, abs=1 / min(sizes.values())
    )
    assert run.record["schedule"]["layers"]["fc"]["weight"] == "fc.weight"
    assert run.record["schedule"]["layers"]["conv3"]["layout"] is None
    assert (bundle.model.conv1.weight != 0).all()  # not named by the schedule: dense


@pytest.mark.parametrize(
    "kind, policy",
    [
        ("ExponentialLR", {"gamma": 0.9}),
        ("StepLR", {"step_size": 2, "gamma": 0.5}),
        ("MultiStepLR", {"milestones": [3, 5], "gamma": 0.1}),
    ],
)
def test_lr_factor_is_torchs_scheduler_stepped_as_distillers_lr_policy(tmp_path, kind, policy):
    """policy.py LRPolicy.on_epoch_end: lr_scheduler.step(epoch=current_epoch + 1) at the end of
    every epoch in range(starting_epoch, ending_epoch, frequency)."""
    from mncli.compress.prune.distiller import read_schedule

    args = "".join(f"\n    {key}: {value}" for key, value in policy.items())
    text = TWO_PRUNERS.replace(
        "  decay:\n    class: ExponentialLR\n    gamma: 0.5", f"  decay:\n    class: {kind}{args}"
    ).replace("    starting_epoch: 3\n    ending_epoch: 6\n    frequency: 1", "    starting_epoch: 1\n"
              "    ending_epoch: 8\n    frequency: 2")  # fmt: skip
    schedule = read_schedule(_write(tmp_path, text))
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scheduler = getattr(torch.optim.lr_scheduler, kind)(optimizer, **policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates step(epoch), which Distiller calls
        for epoch in range(10):
            assert schedule.lr_factor(epoch) == pytest.approx(optimizer.param_groups[0]["lr"]), epoch
            if epoch in range(1, 8, 2):
                scheduler.step(epoch=epoch + 1)


def _edit(old: str, new: str) -> str:
    """TWO_PRUNERS with one edit."""
    assert old in TWO_PRUNERS
    return TWO_PRUNERS.replace(old, new)


@pytest.mark.parametrize(
    "text, extra, message",
    [
        (_edit("class: AutomatedGradualPruner", "class: L1RankedStructureParameterPruner_AGP"), [],
         "class 'L1RankedStructureParameterPruner_AGP' is not supported"),
        (_edit('"fc.weight"', '"module.fc9.weight"'), [], "weight 'module.fc9.weight' of pruner 'late'"),
        (_edit('"module.conv2.weight"', '"module.bn2.weight"'), [], "is not the weight of a conv"),
        ("version: 1\npruners: [early, late]\npolicies: []\n", [], "pruners must be a non-empty mapping"),
        (_edit("version: 1\n", ""), [], "has no `version`"),
        (_edit("ending_epoch: 4", "ending_epoch: 0"), [], "epochs 0 to 0 every 2 is empty"),
        (_edit("ending_epoch: 4", "ending_epoch: four"), [], "ending_epoch must be an integer"),
        (_edit("ending_epoch: 4", "ending_epoch: 2"), [], "give AGP one step"),
        (_edit("final_sparsity: 0.5", "final_sparsity: 0.01"), [], "is not below final_sparsity"),
        (_edit("    final_sparsity: 0.5\n", "    final_sparsity: 0.5\n    group_type: Filters\n"), [],
         "AutomatedGradualPruner does not take 'group_type'"),
        (_edit("class: ExponentialLR", "class: CosineAnnealingLR"), [], "class 'CosineAnnealingLR'"),
        (TWO_PRUNERS + "regularizers: {}\n", [], "`regularizers` are not run"),
        (TWO_PRUNERS + "quantisers: {}\n", [], "unknown key 'quantisers'"),
        (_edit("{instance_name: early}", "{instance_name: early, args: {keep_mask: true}}"), [],
         "pruner key 'args' is not supported"),
        (_edit("    frequency: 2\n", "    frequency: 2\n    epochs: [0, 2]\n"), [], "`epochs` list"),
        (_edit("{instance_name: late}", "{instance_name: later}"), [], "pruner 'later' is not defined"),
        (TWO_PRUNERS, ["--epochs", "5"], "last pruning epoch"),
        (TWO_PRUNERS, ["--sparsity", "0.5"], "--sparsity does not apply to Distiller schedule"),
        (TWO_PRUNERS, ["--schedule", "cosine"], "--schedule cosine would change the LR"),
    ],
)  # fmt: skip
def test_bad_schedules_are_one_line_and_exit_2(tmp_path, run_cli, text, extra, message):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics={"score": None})
    out = tmp_path / "out.safetensors"
    run = run_cli("prune", src, "--recipe", _write(tmp_path, text), "-d", DATA, "-o", out, *extra)
    assert run.code == 2, run.err
    assert len(run.err.splitlines()) == 1 and message in run.err, run.err
    assert not out.exists()
