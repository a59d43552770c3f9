"""The training engine: one loop for train, prune, ternarize, quantize, search and scale.

    cfg = TrainConfig(epochs=30, lr=0.1, schedule="cosine")
    result = fit(model, data, cfg, callbacks=[MyMasks()], teacher=None, ckpt_dir=Path("out.ckpt"))
    metrics = evaluate(model, data.test, device)

Compression methods plug in through `Callback` (see callbacks.py); the loop knows nothing of them.
"""

from mncli.engine.callbacks import Callback, Context
from mncli.engine.checkpoint import ckpt_dir_for
from mncli.engine.config import TrainConfig
from mncli.engine.evaluate import evaluate
from mncli.engine.loop import FitResult, fit
from mncli.engine.runtime import Runtime, configure
from mncli.engine.stopping import TrainingInterrupted

__all__ = [
    "Callback",
    "Context",
    "FitResult",
    "Runtime",
    "TrainConfig",
    "TrainingInterrupted",
    "ckpt_dir_for",
    "configure",
    "evaluate",
    "fit",
]
