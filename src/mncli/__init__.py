"""mncli: compress neural networks and score them by the MicroNet Challenge rules.

The Python API (see mncli.api; imported on first use, so `import mncli` and `mncli --help` stay free
of torch): score, load, save, load_data, evaluate, train, prune, ternarize, quantize, TrainOptions.
"""

from mncli.version import __version__

_API = (
    "score",
    "load",
    "save",
    "load_data",
    "evaluate",
    "train",
    "prune",
    "ternarize",
    "quantize",
    "specs_of",
)
__all__ = [*_API, "TrainOptions", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from mncli import api

        return getattr(api, name)
    if name == "TrainOptions":
        from mncli.stages.training import TrainOptions

        return TrainOptions
    raise AttributeError(f"module 'mncli' has no attribute {name!r}")
