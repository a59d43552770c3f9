"""`mncli search` under torchrun: 2 gloo processes on CPU (issue 18, item 3).

What holds, and how it is tested:
- every rank trains the same sampled path and ends every step with bit-identical alphas (per-rank
  traces written with MNCLI_SEARCH_TRACE, compared line by line, exactly), and bit-identical weights;
- the gradients are reduced as the global batch's: on a super-network without batch norm (each
  example's output its own, so the shards of a batch add up to the batch) 2 ranks x batch 16 follow
  a single process with batch 32 step by step: the same paths, alphas and CE within 1e-6 (measured
  2e-7), weights within 1e-6 (measured 1e-8);
- with batch norm (each rank normalises its share with its own statistics) the runs drift apart:
  on this tiny space the derived network is the same and the probabilities agree within 0.06
  (measured 0.036); with the engine's --sync-bn they do not: alphas within 1e-5 (measured 8e-7);
- rank 0 alone prints (one JSON object), logs and writes the artifact.

The file is also the workers' script: `torchrun tests/test_distributed_search.py OUT BATCH`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SYN = "synthetic:classes=4,shape=1x8x8,train=128,test=32"
SPACE = [
    "--widths", "8,16", "--repeats", "2,1", "--strides", "2,2", "--stem-channels", "8",
    "--head-channels", "0", "--ops", "k3_e3,k5_e3,zero",
]  # fmt: skip
SEARCH = [
    "search", "-d", SYN, "--val-size", "32", *SPACE, "--weights-warmup-epochs", "1", "--epochs", "3",
    "--arch-every", "1", "--arch-lr", "0.05", "--cost-loss", "add#linear", "--target-ops", "1e5",
    "--device", "cpu", "--precision", "fp32", "--json",
]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "MNCLI_NUM_THREADS": "1", **extra}


def _trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def test_search_under_torchrun_matches_across_ranks_and_a_single_process(tmp_path, run_cli, monkeypatch):
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    cmd = [*TORCHRUN, "-m", "mncli", *SEARCH, "-b", "16", "-o", "arch.safetensors"]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=ddp,
        env=_env(MNCLI_SEARCH_TRACE=str(tmp_path / "trace")),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    reported = json.loads(run.stdout)  # rank 0 alone printed: one JSON object
    assert reported["output"] == "arch.safetensors"
    assert sorted(p.name for p in ddp.iterdir()) == ["arch.manifest.json", "arch.safetensors"]
    assert run.stderr.count("search space: 3 choice blocks") == 1  # rank 0 alone logs
    assert run.stderr.count("epoch 4 (search): most likely") == 1

    # every step: the same path and exactly the same alphas on both ranks, the same weights at the end
    rank0, rank1 = _trace(tmp_path / "trace.rank0.jsonl"), _trace(tmp_path / "trace.rank1.jsonl")
    assert len(rank0) == len(rank1) == 3 * 4 + 9 * 1 + 1  # 3 weight steps/epoch, 9 arch steps, end
    assert rank0 == rank1
    assert sum(r["kind"] == "arch" for r in rank0) == 9
    assert rank0[-1]["alphas"] != rank0[0]["alphas"]  # the search moved them

    # a single process with the same global batch (2 x 16)
    monkeypatch.setenv("MNCLI_SEARCH_TRACE", str(tmp_path / "single"))
    single = run_cli(*SEARCH, "-b", "32", "-o", tmp_path / "single.safetensors")
    assert single.code == 0, single.err
    alone = _trace(tmp_path / "single.rank0.jsonl")
    assert [r["kind"] for r in alone] == [r["kind"] for r in rank0]
    # the warm-up (random paths from one seed) is the same; the first arch step is the same up to the
    # batch-norm statistics of each half batch
    warmup = [r for r in rank0 if r["kind"] == "weight"][:3]
    assert [r["active"] for r in warmup] == [r["active"] for r in alone[:3]]
    first_arch = next(i for i, r in enumerate(rank0) if r["kind"] == "arch")
    assert rank0[first_arch]["active"] == alone[first_arch]["active"]
    assert _max_diff(rank0[first_arch]["alphas"], alone[first_arch]["alphas"]) < 1e-4
    assert single.json["arch"] == reported["arch"]
    for ours, theirs in zip(reported["blocks"], single.json["blocks"], strict=True):
        assert ours["chosen"] == theirs["chosen"]
        for op, p in ours["probabilities"].items():
            assert p == pytest.approx(theirs["probabilities"][op], abs=0.06)


def test_with_sync_bn_the_search_follows_the_single_process(tmp_path, run_cli, monkeypatch):
    """--sync-bn (the engine's) normalises each step with the global batch's statistics: then the 2-rank
    search is the single process's step by step (alphas within 1e-5; measured 8e-7 after 22 steps)."""
    cmd = [*TORCHRUN, "-m", "mncli", *SEARCH, "--sync-bn", "-b", "16", "-o", "arch.safetensors"]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=_env(MNCLI_SEARCH_TRACE=str(tmp_path / "trace")),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    reported = json.loads(run.stdout)
    monkeypatch.setenv("MNCLI_SEARCH_TRACE", str(tmp_path / "single"))
    single = run_cli(*SEARCH, "-b", "32", "-o", tmp_path / "single.safetensors")
    assert single.code == 0, single.err
    rank0, rank1 = _trace(tmp_path / "trace.rank0.jsonl"), _trace(tmp_path / "trace.rank1.jsonl")
    assert rank0 == rank1
    alone = _trace(tmp_path / "single.rank0.jsonl")
    assert len(alone) == len(rank0)
    for ours, theirs in zip(rank0, alone, strict=True):
        assert ours["kind"] == theirs["kind"] and ours["active"] == theirs["active"]
        assert _max_diff(ours["alphas"], theirs["alphas"]) < 1e-5
        if ours["kind"] == "arch":
            assert ours["arch_ce"] == pytest.approx(theirs["arch_ce"], abs=1e-5)
    assert reported["arch"] == single.json["arch"]
    # BN re-estimated on the same global batches: the same accuracy, give or take one of 32 examples
    shared_acc = single.json["val_acc_shared_weights"]
    assert reported["val_acc_shared_weights"] == pytest.approx(shared_acc, abs=1 / 32)


# --- the gradients: a super-network without batch norm, 2 ranks x 16 against 1 process x 32 ---------


def _tiny_supernet(shared: bool):
    from mncli.search.supernet import SuperNet
    from mncli.stages.search import SearchConfig, build_space

    config = SearchConfig(
        widths=[8, 16], repeats=[2, 1], strides=[2, 2], stem_channels=8, head_channels=0,
        ops=["k3_e3", "k5_e3", "zero"],
    )  # fmt: skip
    return SuperNet(build_space(config, 1, 8, 4), seed=0, shared=shared)


def _strip_bn(net) -> None:
    """BatchNorm -> Identity: every example's output its own, so a batch's shards add up to it."""
    from torch import nn

    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.Identity())


def _no_bn_search(out: Path, batch_size: int, shared: bool) -> None:
    """Run the search callback in `fit` on a BN-free super-network (shared weights with binary mode
    two, or separate weights with full); save the weights, the initial weights and the alphas to
    OUT/rank<R>.pt."""
    import torch

    from mncli.data import load_data, scoring_task
    from mncli.engine import TrainConfig, fit
    from mncli.search.callback import make_callback
    from mncli.search.cost import CostModel
    from mncli.search.proxyless import ArchConfig, ArchitectureSearch

    data = load_data(SYN, val_size=32, batch_size=batch_size)
    net = _tiny_supernet(shared)
    costs = CostModel(net, "ops", scoring_task(SYN))
    _strip_bn(net)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    arch = ArchConfig(binary_mode="two" if shared else "full", arch_lr=0.05, update_every=1,
                      weights_warmup_epochs=1, loss="mul#log", target=1e5)  # fmt: skip
    search = ArchitectureSearch(net, costs, arch, seed=0)
    callback = make_callback(search, 1, "ops")
    cfg = TrainConfig(epochs=3, batch_size=batch_size, lr=0.05, weight_decay=4e-5, device="cpu",
                      precision="fp32", keep_best=False, seed=0)  # fmt: skip
    fit(net, data, cfg, [callback], show_progress=False)
    rank = int(os.environ.get("RANK", "0"))
    state = {"weights": net.state_dict(), "initial": initial, "alphas": net.arch_parameters()}
    torch.save(state, out / f"rank{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("shared", [False, True], ids=["separate-weights", "shared-weights"])
def test_sampled_path_gradients_are_the_global_batch_gradients(tmp_path, monkeypatch, shared):
    import torch

    script = [*TORCHRUN, __file__, str(tmp_path), "16", str(int(shared))]
    run = subprocess.run(
        script, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=_env(MNCLI_SEARCH_TRACE=str(tmp_path / "trace")),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    alone = tmp_path / "alone"
    alone.mkdir()
    monkeypatch.setenv("MNCLI_SEARCH_TRACE", str(alone / "trace"))
    _no_bn_search(alone, 32, shared)

    rank0, rank1 = _trace(tmp_path / "trace.rank0.jsonl"), _trace(tmp_path / "trace.rank1.jsonl")
    assert rank0 == rank1  # paths and alphas bit-identical after every step
    single = _trace(alone / "trace.rank0.jsonl")
    assert len(single) == len(rank0)
    for ours, theirs in zip(rank0, single, strict=True):
        assert ours["kind"] == theirs["kind"]
        assert ours["active"] == theirs["active"] and ours["involved"] == theirs["involved"]
        assert _max_diff(ours["alphas"], theirs["alphas"]) < 1e-6
        if ours["kind"] == "arch":  # the CE of the global validation batch, reduced
            assert ours["arch_ce"] == pytest.approx(theirs["arch_ce"], abs=1e-6)
    assert rank0[-1]["weights"] == rank1[-1]["weights"]  # parameters bit-identical across ranks

    states = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    reference = torch.load(alone / "rank0.pt")
    for key, value in reference["weights"].items():
        assert torch.equal(states[0]["weights"][key], states[1]["weights"][key]), key
        assert torch.allclose(states[0]["weights"][key], value, rtol=0, atol=1e-6), key
        if torch.equal(value, reference["initial"][key]):  # no step sampled it: no weight decay either
            assert torch.equal(states[0]["weights"][key], value), key
    for ours, theirs in zip(states[0]["alphas"], reference["alphas"], strict=True):
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)


def test_validation_shares_cover_each_global_batch_once():
    """Rank r's k-th share is its part of the single process's k-th batch of world x batch size; a last
    batch with fewer examples than ranks is left out, so no rank ever has an empty share."""
    from mncli.errors import BadInput
    from mncli.search.callback import _cycle, _val_shares

    single = _cycle(_split(8))
    shares = [_val_shares(_split(4), r, 2) for r in (0, 1)]
    for _ in range(2 * 3):  # two cycles of 3 global batches (8, 8, 5)
        _, y = next(single)
        parts = [next(share)[1] for share in shares]
        assert sorted(sum((p.tolist() for p in parts), [])) == sorted(y.tolist())
    # 10 ranks x 2 = 20: the 2nd global batch would hold example 20 alone; the cycle is batch 1
    rank0, rank9 = (_val_shares(_split(2), r, 10) for r in (0, 9))
    assert [y.tolist() for _, y in (next(rank0), next(rank0))] == [[0, 10], [0, 10]]
    assert [y.tolist() for _, y in (next(rank9), next(rank9))] == [[9, 19], [9, 19]]
    with pytest.raises(BadInput, match="smaller than the 30 ranks"):
        next(_val_shares(_split(1), 0, 30))


def _split(batch_size: int):
    """21 one-pixel images whose labels are their positions."""
    import torch

    from mncli.data.augment import Augment
    from mncli.data.splits import TensorSplit

    images = torch.arange(21, dtype=torch.uint8).view(21, 1, 1, 1)
    return TensorSplit(images, torch.arange(21), (0.0,), (1.0,), Augment(), batch_size=batch_size)


def _arch_steps(out: Path | None) -> list:
    """Two architecture steps on one validation batch of 16 on a BN-free super-network: under torchrun
    the ranks hold unequal shares of it (12 + 4, then 3 + 13); the alphas and the CE after each step
    (saved to OUT/rank<R>.pt under torchrun, returned)."""
    import torch

    from mncli.data import load_data, scoring_task
    from mncli.search.cost import CostModel
    from mncli.search.proxyless import ArchConfig, ArchitectureSearch

    data = load_data(SYN, val_size=32, batch_size=16)
    x, y = next(iter(data.val))
    net = _tiny_supernet(shared=False)
    arch = ArchConfig(arch_lr=0.05, loss="mul#log", target=1e5)
    search = ArchitectureSearch(net, CostModel(net, "ops", scoring_task(SYN)), arch, seed=0)
    _strip_bn(net)
    rank = 0
    if out is not None:
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
    alphas = []
    for cut in (12, 3):
        part = slice(None) if out is None else slice(0, cut) if rank == 0 else slice(cut, None)
        search.arch_step(x[part], y[part])
        alphas.append([a.detach().clone() for a in net.arch_parameters()] + [search.last["arch_ce"]])
    if out is not None:
        torch.save(alphas, out / f"rank{rank}.pt")
        torch.distributed.destroy_process_group()
    return alphas


def test_unequal_validation_shares_are_weighted_by_size(tmp_path):
    import torch

    run = subprocess.run(
        [*TORCHRUN, __file__, "arch-steps", str(tmp_path)], capture_output=True, text=True,
        timeout=300, cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    single = _arch_steps(None)
    for step in range(2):
        *alphas0, ce0 = ranks[0][step]
        *alphas1, ce1 = ranks[1][step]
        *alone, ce = single[step]
        assert ce0 == ce1 == pytest.approx(ce, abs=1e-6)
        for a0, a1, a in zip(alphas0, alphas1, alone, strict=True):
            assert torch.equal(a0, a1)
            assert torch.allclose(a0, a, rtol=0, atol=1e-6)
    assert not torch.equal(ranks[0][1][0], ranks[0][0][0])  # both steps moved the alphas


if __name__ == "__main__":  # a worker under torchrun
    if sys.argv[1] == "arch-steps":
        _arch_steps(Path(sys.argv[2]))
    else:
        _no_bn_search(Path(sys.argv[1]), int(sys.argv[2]), bool(int(sys.argv[3])))
