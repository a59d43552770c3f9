"""Stage `quantize`: n-bit weights and input activations per layer (LSQ, PACT, DoReFa QAT, or PTQ),
optional fp16 for what stays float, and an accumulator-width claim checked by integer simulation.

run(config) -> result dict. Ternary layers keep their weights (only their inputs are quantized) and
masks keep their zeros. The saved model holds real values: int weights = code * scale, deployed act
quantizers with their scales, so `mncli eval` of the output runs exactly the quantized network.
Training options are the common ones (`stages.train.TrainOptions`); the defaults here are the LSQ
paper's fine-tuning settings for 2-4 bit networks (SGD, cosine, lr 0.01, weight decay 1e-4), for a
few epochs since the input is a trained network.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.train import TrainOptions

METHODS = ("lsq", "pact", "dorefa")
CALIBRATIONS = ("minmax", "percentile")
DEFAULT_EPOCHS = 3
DEFAULT_LR = 0.01
DEFAULT_WEIGHT_DECAY = 1e-4


def default_train_options(dataset: str, **overrides) -> TrainOptions:
    values = {"epochs": DEFAULT_EPOCHS, "lr": DEFAULT_LR, "weight_decay": DEFAULT_WEIGHT_DECAY, **overrides}
    return TrainOptions(dataset=dataset, **values)


@dataclass
class QuantizeConfig:
    input: Path
    out: Path
    train: TrainOptions
    weight_bits: int = 4
    act_bits: int = 4
    first_last_bits: int = 8
    method: str = "lsq"
    ptq: bool = False
    calibration: str = "minmax"
    percentile: float = 99.99
    calib_batches: int = 4
    fp16: bool = False
    accumulator_bits: int = 32
    accumulator_batches: int | None = None  # None: the whole validation split
    recipe: Path | None = None
    pact_decay: float | None = None  # L2 on PACT's alpha; None: the weight decay
    extra: dict = field(default_factory=dict)


def validate(cfg: QuantizeConfig) -> None:
    from mncli.compress.quant.plan import check_bits

    check_bits(cfg.weight_bits, "--weight-bits")
    check_bits(cfg.act_bits, "--act-bits")
    check_bits(cfg.first_last_bits, "--first-last-bits")
    if cfg.method not in METHODS:
        raise BadInput(f"unknown method {cfg.method!r}", hint="use --method lsq, pact or dorefa")
    if cfg.calibration not in CALIBRATIONS:
        raise BadInput(f"unknown calibration {cfg.calibration!r}", hint="use minmax or percentile")
    if not 50.0 < cfg.percentile <= 100.0:
        raise BadInput(f"--percentile {cfg.percentile} is outside (50, 100]", hint="e.g. 99.99")
    if not 2 <= cfg.accumulator_bits <= 32:
        raise BadInput(f"--accumulator-bits {cfg.accumulator_bits} is outside 2-32", hint="e.g. 24")
    if cfg.calib_batches < 1:
        raise BadInput("--calib-batches must be at least 1", hint="e.g. --calib-batches 4")
    if cfg.accumulator_batches is not None and cfg.accumulator_batches < 1:
        raise BadInput("--accumulator-batches must be at least 1", hint="omit it to check the whole split")
    if cfg.pact_decay is not None and cfg.pact_decay < 0:
        raise BadInput(f"--pact-decay must be >= 0, got {cfg.pact_decay}")
    if not Path(cfg.input).is_file():
        raise BadInput(f"input {cfg.input} not found", hint="give the path of a .safetensors artifact")
    cfg.train.validate()


def config_params(cfg: QuantizeConfig) -> dict:
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "train"}
    params.pop("out", None)
    params["train"] = cfg.train.params()
    return params


def run(cfg: QuantizeConfig) -> dict:
    validate(cfg)
    from mncli.stages import quantize_run

    started = time.time()
    result = quantize_run.quantize(cfg)
    result["wall_time_s"] = round(time.time() - started, 1)
    log(
        f"quantized {result['int_weight_layers']} weight / {result['int_act_layers']} activation layers "
        f"({result['method']}): test top-1 {100 * result['test_acc_before']:.2f} % -> "
        f"{100 * result['test_acc']:.2f} %"
    )
    return result
