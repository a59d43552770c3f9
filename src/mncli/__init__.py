"""mncli: compress neural networks and score them by the MicroNet Challenge rules."""

__version__ = "0.1.0"
