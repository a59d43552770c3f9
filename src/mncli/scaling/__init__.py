"""EfficientNet compound scaling of an architecture, and the grids of scaled points `mncli scale` trains.

scale_arch(arch, depth=1.4 ** 3.5, width=1.2 ** 3.5)   # EfficientNet rounding of channels, repeats
"""

from mncli.scaling.compound import DEFAULT_GRID, round_filters, round_repeats, scale_arch

__all__ = ["DEFAULT_GRID", "round_filters", "round_repeats", "scale_arch"]
