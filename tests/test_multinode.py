"""Multi-node torchrun (issue 18, item 4): two "nodes" of one process each on this machine.

Two torchrun launchers, each started in its own folder (as two machines with no shared disk would be),
meet through a c10d rendezvous on 127.0.0.1 at a port found free at run time:

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT \
        --rdzv-id ID --local-addr 127.0.0.1 -m mncli train ... -o out.safetensors

Every address is the loopback one: the rendezvous endpoint, the launchers' `--local-addr` (the
address the workers are told to reach rank 0's store at) and gloo's interface (GLOO_SOCKET_IFNAME=lo).
Each launcher has TIMEOUT_S and the rendezvous JOIN_TIMEOUT_S; a launcher still running is killed.

Checked: the job finishes; exactly one node (the one holding rank 0) prints one JSON object and
writes out.safetensors + its manifest, the other node's folder stays empty and its stdout too; the
collective checker ran in both workers; and the result equals a single-process run with the same
seed: the model has no BatchNorm and the 2 x 16 images of a step are the 32 of the single run's
step, so the runs differ only by float reduction order: weights within WEIGHT_ATOL, accuracies equal
(ACC_ATOL), every epoch's training loss within LOSS_ATOL. Takes about 20 s on the shared 2 cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

SYN = "synthetic:classes=4,shape=1x8x8,train=128,test=32"
TRAIN = [
    "train", "--arch", "test-mlp", "--arch-opt", "hidden=16", "--epochs", "2", "--lr", "0.1", "-d", SYN,
    "--device", "cpu", "--precision", "fp32", "--augment", "none", "--seed", "1", "--json",
]  # fmt: skip
WEIGHT_ATOL = 1e-5
LOSS_ATOL = 1e-5
ACC_ATOL = 1e-9
TIMEOUT_S = 150
JOIN_TIMEOUT_S = 60
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def launcher(port: int, run_id: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{LOOPBACK}:{port}", "--rdzv-id", run_id,
        "--rdzv-conf", f"join_timeout={JOIN_TIMEOUT_S}", "--local-addr", LOOPBACK, "--max-restarts", "0",
    ]  # fmt: skip


def two_nodes(tmp_path: Path, argv: list[str]) -> list[tuple[Path, int, str, str]]:
    """Run `mncli ARGV` as two nodes of one process each; (folder, exit code, stdout, stderr) per node."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
    }
    env.update(MNCLI_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [*launcher(free_port(), f"mncli-test-{uuid.uuid4().hex[:8]}"), "-m", "mncli", *argv]
    nodes = []
    for name in ("node0", "node1"):
        folder = tmp_path / name
        folder.mkdir()
        proc = subprocess.Popen(
            cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        nodes.append((folder, proc))
    done = []
    try:
        for folder, proc in nodes:
            out, err = proc.communicate(timeout=TIMEOUT_S)
            done.append((folder, proc.returncode, out, err))
    finally:
        for _, proc in nodes:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


def weights(path: Path) -> dict:
    from mncli.bundle import load_bundle

    return {k: v.detach().float() for k, v in load_bundle(path).model.state_dict().items()}


def test_two_nodes_on_localhost_equal_one_process(tmp_path, run_cli):
    nodes = two_nodes(tmp_path, [*TRAIN, "-b", "16", "-o", "out.safetensors"])
    for folder, code, _, err in nodes:
        assert code == 0, (folder.name, err[-2500:])
        assert "collective check: rank" in err, err[-1500:]  # the NCCL-rules checker ran on this node

    printed = [(folder, out) for folder, _, out, _ in nodes if out.strip()]
    assert len(printed) == 1, [out[-500:] for *_, out, _ in nodes]  # rank 0 alone printed
    main_dir, stdout = printed[0]
    reported = json.loads(stdout)
    assert reported["runtime"]["world_size"] == 2
    for folder, *_ in nodes:  # rank 0 alone wrote, nothing else (no checkpoints left)
        expected = ["out.manifest.json", "out.safetensors"] if folder == main_dir else []
        assert sorted(p.name for p in folder.iterdir()) == expected, folder.name

    one_dir = tmp_path / "one"
    one_dir.mkdir()
    single = run_cli(*TRAIN, "-b", "32", "-o", one_dir / "out.safetensors")
    assert single.code == 0, single.err[-2000:]
    one = single.json
    for key in ("val_acc", "test_acc", "test_top5"):
        assert reported[key] == pytest.approx(one[key], abs=ACC_ATOL), key

    a, b = weights(one_dir / "out.safetensors"), weights(main_dir / "out.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print("MEASURED max weight difference, 2 nodes vs 1 process:", worst)
    assert worst <= WEIGHT_ATOL, worst

    from mncli.artifact import read_manifest

    hist_one = read_manifest(one_dir / "out.safetensors")["metrics"]["history"]
    hist_two = read_manifest(main_dir / "out.safetensors")["metrics"]["history"]
    assert len(hist_one) == len(hist_two) == 2
    for x, y in zip(hist_one, hist_two, strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], abs=LOSS_ATOL)
