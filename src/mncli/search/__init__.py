"""Architecture search: ProxylessNAS under a MicroNet cost target (compound scaling is mncli.scaling).

space = SearchSpace(in_channels=1, input_size=28, num_classes=10, **default_space(1, 28, 10))
supernet = SuperNet(space)                      # choice blocks of zoo MBConv candidates
costs = CostModel(supernet, "ops")              # every candidate counted once by mncli.scoring
search = ArchitectureSearch(supernet, costs, ArchConfig(target=5e6))
search.sample_weight_paths(warmup=False); ...; search.arch_step(x_val, y_val)
derived = derive(supernet, costs, target=5e6, fit=True)["arch"]   # an `mbconv` arch
"""

from mncli.search.cost import CostModel, check_target, cost_loss, fit_to_target
from mncli.search.derive import derive
from mncli.search.proxyless import ArchConfig, ArchitectureSearch, estimator_gradient
from mncli.search.space import DEFAULT_OPS, SearchSpace, default_space, parse_op
from mncli.search.supernet import MixedOp, SuperNet, derived_arch

__all__ = [
    "DEFAULT_OPS",
    "ArchConfig",
    "ArchitectureSearch",
    "CostModel",
    "MixedOp",
    "SearchSpace",
    "SuperNet",
    "check_target",
    "cost_loss",
    "default_space",
    "derive",
    "derived_arch",
    "estimator_gradient",
    "fit_to_target",
    "parse_op",
]
