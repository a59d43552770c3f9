"""The ProxylessNAS gradient estimator on tiny choice blocks: gate gradients, alpha gradients, `two` mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mncli.search.proxyless import estimator_gradient, rescale_two, sample_path
from mncli.search.supernet import MixedOp

CHOICES = ["k3_e3", "k5_e6", "zero"]


def _tiny_op(seed: int = 0, shared: bool = False) -> MixedOp:
    torch.manual_seed(seed)
    op = MixedOp(CHOICES, c_in=4, c_out=4, stride=1, shared=shared).double()
    op.alpha = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    op.gates = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    op.eval()  # fixed BN statistics: each path is a deterministic function of x
    return op


def _path_outputs(op: MixedOp, x: torch.Tensor) -> list[torch.Tensor]:
    return [candidate(x) for candidate in op.candidates]


def _arch_gradient(op: MixedOp, x: torch.Tensor, loss_fn, active: int) -> torch.Tensor:
    """What the search computes: binary gates on one path, then the estimator."""
    op.mode, op.active, op.involved = "arch", active, list(range(len(op.choices)))
    loss = loss_fn(op(x))
    (gate_grads,) = torch.autograd.grad(loss, [op.gates])
    return estimator_gradient(op.probs().detach(), gate_grads)


@pytest.mark.parametrize("shared", [False, True])
def test_gate_gradients_equal_autograd_of_the_gated_sum(shared):
    op = _tiny_op(shared=shared)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    target = torch.tensor([1, 3])

    def loss_fn(y):
        return F.cross_entropy(y.mean(dim=(2, 3)), target)

    for active in range(3):
        op.mode, op.active, op.involved = "arch", active, [0, 1, 2]
        (ours,) = torch.autograd.grad(loss_fn(op(x)), [op.gates])
        gates = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        onehot = torch.nn.functional.one_hot(torch.tensor(active), 3).double()
        mixed = sum(
            (onehot[j] + gates[j] - gates[j].detach()) * o for j, o in enumerate(_path_outputs(op, x))
        )
        (reference,) = torch.autograd.grad(loss_fn(mixed), [gates])
        torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("shared", [False, True])
def test_arch_gradient_matches_finite_differences_of_the_exact_expected_loss(shared):
    # With a loss linear in the block's output, the exact expected loss over all paths,
    # F(alpha) = sum_j p_j(alpha) L(o_j), has the gradient the estimator gives for any sampled path.
    op = _tiny_op(1, shared=shared)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = torch.randn(2, 4, 5, 5, dtype=torch.float64)

    def loss_fn(y):
        return (y * w).sum()

    with torch.no_grad():
        losses = torch.stack([loss_fn(o) for o in _path_outputs(op, x)])

    def expected_loss(alpha):
        return torch.dot(torch.softmax(alpha, 0), losses)

    alpha = op.alpha.detach()
    eps = 1e-5
    finite = torch.stack(
        [
            (expected_loss(alpha + eps * e) - expected_loss(alpha - eps * e)) / (2 * eps)
            for e in torch.eye(3, dtype=torch.float64)
        ]
    )
    for active in range(3):
        torch.testing.assert_close(_arch_gradient(op, x, loss_fn, active), finite, rtol=1e-5, atol=1e-7)


def test_estimator_equals_autograd_of_the_softmax_weighted_mixture_at_the_gates():
    # dL/dalpha_i = sum_j dL/dg_j * dp_j/dalpha_i: the chain rule through the softmax.
    probs_alpha = torch.tensor([0.5, -1.0, 0.2, 0.0], dtype=torch.float64, requires_grad=True)
    gate_grads = torch.tensor([0.7, -0.3, 1.1, 0.05], dtype=torch.float64)
    (reference,) = torch.autograd.grad(torch.dot(torch.softmax(probs_alpha, 0), gate_grads), [probs_alpha])
    ours = estimator_gradient(torch.softmax(probs_alpha.detach(), 0), gate_grads)
    torch.testing.assert_close(ours, reference)


def test_gradient_flows_through_stacked_choice_blocks():
    torch.manual_seed(3)
    first, second = _tiny_op(3), _tiny_op(4)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    target = torch.tensor([0, 2])

    def loss_fn(y):
        return F.cross_entropy(y.mean(dim=(2, 3)), target)

    for op, active in ((first, 1), (second, 0)):
        op.mode, op.active, op.involved = "arch", active, [0, 1, 2]
    ours = torch.autograd.grad(loss_fn(second(first(x))), [first.gates, second.gates])
    gates = [torch.zeros(3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    y = x
    for op, g, active in ((first, gates[0], 1), (second, gates[1], 0)):
        outs = _path_outputs(op, y)
        y = sum(((1.0 if j == active else 0.0) + g[j] - g[j].detach()) * o for j, o in enumerate(outs))
    reference = torch.autograd.grad(loss_fn(y), gates)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b)


def test_two_mode_keeps_the_other_paths_probabilities():
    op = _tiny_op()
    generator = torch.Generator().manual_seed(0)
    sample_path(op, generator, uniform=False, mode="two")
    assert len(op.involved) == 2 and op.active in op.involved
    before = op.probs().detach().clone()
    old = op.alpha.detach().clone()
    with torch.no_grad():
        op.alpha[op.involved[0]] += 0.5
        op.alpha[op.involved[1]] -= 0.2
    rescale_two(op, old)
    after = op.probs().detach()
    others = [i for i in range(3) if i not in op.involved]
    torch.testing.assert_close(after[others], before[others])
    assert not torch.allclose(after[op.involved], before[op.involved])


def test_search_state_survives_a_weights_only_checkpoint(tmp_path):
    from mncli.search.callback import make_callback
    from mncli.search.cost import CostModel
    from mncli.search.proxyless import ArchConfig, ArchitectureSearch
    from mncli.search.space import SearchSpace
    from mncli.search.supernet import SuperNet

    def build():
        space = SearchSpace(
            in_channels=1, input_size=8, num_classes=3, stem_channels=8, stem_stride=1,
            widths=[8], repeats=[2], strides=[2], ops=CHOICES, head_channels=0,
        )  # fmt: skip
        net = SuperNet(space, seed=0)
        search = ArchitectureSearch(net, CostModel(net, "ops"), ArchConfig(target=1e5), seed=0)
        return search, make_callback(search, 0, "ops")

    search, callback = build()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        search.arch_step(x, y)
    path = tmp_path / "state.pt"
    torch.save(callback.state_dict(), path)
    restored, restored_callback = build()
    restored_callback.load_state_dict(torch.load(path, weights_only=True))
    restored.supernet.load_state_dict(search.supernet.state_dict())  # the engine restores the weights
    for a, b in zip(search.supernet.arch_parameters(), restored.supernet.arch_parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach())
    search.arch_step(x, y)
    restored.arch_step(x, y)  # same optimiser moments and sampling state: the same next step
    for a, b in zip(search.supernet.arch_parameters(), restored.supernet.arch_parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach())
