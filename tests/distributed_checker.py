"""A test-only checker that holds NCCL's rules in CPU (gloo) runs, so that what would fail on GPUs
fails here first. Installed in every torchrun worker the test suite starts: conftest puts tests/ on
PYTHONPATH and sets MNCLI_COLLECTIVE_CHECK=1, and tests/sitecustomize.py calls `install()` in any
Python process with WORLD_SIZE > 1. Nothing in src/ knows about it.

Rules, checked before every collective of torch.distributed (all_reduce, broadcast, all_gather, ...;
object collectives and barriers by name; point-to-point by device only):

1. Device. Every tensor is on the rank's compute device (cuda:LOCAL_RANK on GPUs, else cpu, or
   $MNCLI_CHECK_DEVICE) and is not a *host* tensor. On a CPU run cpu is both the host and the compute
   device, so a torch function mode tracks which tensors a GPU run would have on the host: made by a
   factory without `device=` (torch.tensor, zeros, arange, ...), by `.cpu()` (a new tensor object,
   as on GPUs, though it shares the storage), or computed only from such tensors. `x.to(device)` or
   `device=...` makes a compute-device tensor (so a literal `device="cpu"` is not caught: on CPU it
   cannot be told from the runtime's device). Tensors torch makes outside Python's torch functions
   (gradients, torch.from_numpy) or before install count as on the device.
2. Sequence. Every rank makes the same collectives in the same order with the same shapes, dtypes
   and reduce ops: before each one the ranks all-gather (call number, running hash, device verdict),
   and on any difference every rank fails with every rank's description of the call.

A violation prints "collective check failed: ..." on stderr and raises CollectiveCheckError. At exit
each rank prints "collective check: rank R: N collectives checked" (and, with
$MNCLI_COLLECTIVE_CHECK_LOG=DIR, writes DIR/rank<R>-attempt<A>-<pid>.json) so a test can tell it ran.

Test-only switches (environment of the torchrun workers):
  MNCLI_CHECK_FAULT=host-tensor     the engine's stop flag made as before the fix: torch.tensor([flag]),
                                    on the host, the tensor NCCL refuses; the checker must fail the run
  MNCLI_CHECK_FAULT=shape-mismatch  rank 1's stop flag has 2 elements instead of 1
  MNCLI_TEST_KILL=RANK:STEP:MARKER  rank RANK calls os._exit(1) before global step STEP, once: only
                                    while the file MARKER does not exist (it creates it first)
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
import threading
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

ENV = "MNCLI_COLLECTIVE_CHECK"
LOG_ENV = "MNCLI_COLLECTIVE_CHECK_LOG"
FAULT_ENV = "MNCLI_CHECK_FAULT"
KILL_ENV = "MNCLI_TEST_KILL"

TENSOR_COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "gather",
    "scatter",
    "all_to_all",
    "all_to_all_single",
    "all_reduce_coalesced",
    "all_gather_coalesced",
)
NAMED_COLLECTIVES = (
    "barrier",
    "monitored_barrier",
    "broadcast_object_list",
    "all_gather_object",
    "gather_object",
    "scatter_object_list",
)
POINT_TO_POINT = ("send", "recv", "isend", "irecv")

_HOST = "_mncli_host"


class CollectiveCheckError(RuntimeError):
    pass


# --- which tensors a GPU run would hold on the host ----------------------------------------------

FACTORIES = {
    torch.tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace,
    torch.logspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm,
    torch.from_numpy, torch.scalar_tensor, torch.empty_strided, torch.frombuffer,
}  # fmt: skip


def is_host(tensor: torch.Tensor) -> bool:
    return bool(tensor.__dict__.get(_HOST, False))


def _tensors(value, depth: int = 0):
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 3 and isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, depth + 1)


def _to_target(args, kwargs):
    """What `Tensor.to(...)` moves to: a tensor (its device), a device, or None (dtype only)."""
    for value in (*args[1:], kwargs.get("device"), kwargs.get("other")):
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, torch.device | int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            return value
    return None


def _host_verdict(func, args, kwargs, out) -> bool | None:
    """True: `out` is a host tensor; False: on the compute device; None: leave its mark alone."""
    if func is torch.Tensor.cpu:
        return True
    if func is torch.Tensor.cuda:
        return False
    if func is torch.Tensor.to:
        target = _to_target(args, kwargs)
        if isinstance(target, torch.Tensor):
            return is_host(target)
        return False if target is not None else is_host(args[0])
    if kwargs.get("device") is not None:
        return False
    if "out" in kwargs:
        return None
    if func in FACTORIES:
        return True
    if func is torch.as_tensor:
        return is_host(args[0]) if isinstance(args[0], torch.Tensor) else True
    if args and out is args[0]:  # in place (or returned as is): it stays where it was
        return None
    tensors = [t for t in _tensors((args, kwargs)) if isinstance(t, torch.Tensor)]
    if not tensors:
        return None
    return all(is_host(t) for t in tensors)


class HostTracker(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.Tensor.cpu and out is args[0] and not isinstance(out, torch.nn.Parameter):
            out = out.view_as(out)  # on GPUs a new (host) tensor; the device tensor stays as it was
        try:
            verdict = _host_verdict(func, args, kwargs, out)
        except Exception:  # never break the run being checked
            verdict = None
        if verdict is not None:
            for tensor in _tensors(out):
                try:
                    tensor.__dict__[_HOST] = verdict
                except (AttributeError, TypeError):
                    pass
        return out


# --- the collectives ------------------------------------------------------------------------------


def compute_device() -> torch.device:
    if os.environ.get("MNCLI_CHECK_DEVICE"):
        return torch.device(os.environ["MNCLI_CHECK_DEVICE"])
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def device_problems(tensors, device: torch.device) -> list[str]:
    """Why these tensors may not go into a collective on `device` (empty when they may)."""
    problems = []
    for i, t in enumerate(tensors):
        where = t.device
        same = where.type == device.type and (device.index is None or where.index in (None, device.index))
        if not same:
            problems.append(f"tensor {i} {list(t.shape)} is on {where}, not the rank's device {device}")
        elif is_host(t):
            problems.append(
                f"tensor {i} {list(t.shape)} {t.dtype} is a host tensor (made without device=, by "
                f".cpu(), or from such tensors): NCCL refuses it on GPUs"
            )
    return problems


class Checker:
    def __init__(self, device: torch.device):
        self.device = device
        self.original: dict[str, object] = {}
        self.calls: Counter = Counter()
        self.count: dict[object, int] = {}
        self.digest: dict[object, str] = {}
        self.local = threading.local()

    def rank(self) -> int:
        dist = torch.distributed
        return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))

    def install(self) -> None:
        dist = torch.distributed
        for name in (*TENSOR_COLLECTIVES, *NAMED_COLLECTIVES, *POINT_TO_POINT):
            fn = getattr(dist, name, None)
            if fn is None or name in self.original:
                continue
            self.original[name] = fn
            setattr(dist, name, self._wrap(name, fn))

    def _wrap(self, name: str, fn):
        def checked(*args, **kwargs):
            if getattr(self.local, "busy", False):  # a collective inside another (object ones)
                return fn(*args, **kwargs)
            self.local.busy = True
            try:
                self.check(name, args, kwargs)
            finally:
                self.local.busy = False
            return fn(*args, **kwargs)

        checked.__wrapped__ = fn
        checked.__name__ = name
        return checked

    def check(self, name: str, args, kwargs) -> None:
        tensors = [] if name in NAMED_COLLECTIVES else list(_tensors((args, kwargs)))
        problems = device_problems(tensors, self.device)
        if name in POINT_TO_POINT:  # sequences differ between sender and receiver by design
            if problems:
                self.fail(f"{name}: " + "; ".join(problems))
            return
        group = next(
            (a for a in (*args, *kwargs.values()) if isinstance(a, torch.distributed.ProcessGroup)), None
        )
        reduce_types = (torch.distributed.ReduceOp, type(torch.distributed.ReduceOp.SUM))
        op = next((a for a in (*args, *kwargs.values()) if isinstance(a, reduce_types)), None)
        shapes = [(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for t in tensors]
        signature = f"{name}{shapes}" + (f" op={op}" if op is not None else "")
        key = id(group) if group is not None else "world"
        number = self.count.get(key, 0) + 1
        self.count[key] = number
        digest = hashlib.blake2b(
            (self.digest.get(key, "") + "|" + signature).encode(), digest_size=8
        ).hexdigest()
        self.digest[key] = digest
        self.calls[name] += 1
        mine = torch.tensor(
            [number, int(digest, 16) & 0x7FFFFFFFFFFFFFFF, 0 if problems else 1],
            dtype=torch.int64,
            device=self.device,
        )
        world = torch.distributed.get_world_size(group)
        gathered = [torch.zeros_like(mine) for _ in range(world)]
        self.original["all_gather"](gathered, mine, group=group)
        rows = [g.tolist() for g in gathered]
        if all(r == rows[0] for r in rows) and rows[0][2] == 1:
            return
        described = f"#{number} {signature}" + (" -- " + "; ".join(problems) if problems else "")
        everyone = [None] * world
        self.original["all_gather_object"](everyone, described, group=group)
        lines = "\n".join(f"  rank {r}: {text}" for r, text in enumerate(everyone))
        what = "differ between ranks" if any(r[:2] != rows[0][:2] for r in rows) else "break NCCL's rules"
        self.fail(f"collectives {what}:\n{lines}")

    def fail(self, message: str) -> None:
        text = f"collective check failed (rank {self.rank()}): {message}"
        _say(text)
        raise CollectiveCheckError(text)

    def summary(self) -> None:
        total = sum(self.calls.values())
        rank = self.rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", "0"))
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.calls.items()))
        _say(f"collective check: rank {rank}: {total} collectives checked ({ops})")
        folder = os.environ.get(LOG_ENV)
        if folder:
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            path = Path(folder) / f"rank{rank}-attempt{attempt}-{os.getpid()}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {"rank": rank, "attempt": int(attempt), "calls": dict(self.calls), "total": total,
                      "digest": self.digest.get("world")}  # fmt: skip
            path.write_text(json.dumps(record))


def _say(text: str) -> None:
    """One line on stderr in one write (the ranks share the stream)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


_installed: Checker | None = None


def install() -> Checker:
    """Wrap torch.distributed's collectives and track host tensors, in this process (idempotent)."""
    global _installed
    if _installed is not None:
        return _installed
    HostTracker().__enter__()  # for the life of the process
    checker = Checker(compute_device())
    checker.install()
    atexit.register(checker.summary)
    _installed = checker
    _install_faults()
    return checker


# --- test-only switches ---------------------------------------------------------------------------


def _install_faults() -> None:
    fault = os.environ.get(FAULT_ENV)
    kill = os.environ.get(KILL_ENV)
    if not fault and not kill:
        return
    from mncli.engine import loop

    if fault == "host-tensor":

        def agree_to_stop(flag, world_size, device):  # the code before the fix
            value = torch.tensor([1.0 if flag else 0.0])
            torch.distributed.all_reduce(value)
            return value.item() > 0

        loop.agree_to_stop = agree_to_stop
    elif fault == "shape-mismatch":

        def agree_to_stop(flag, world_size, device):
            size = 2 if torch.distributed.get_rank() == 1 else 1
            value = torch.full((size,), 1.0 if flag else 0.0, device=device)
            torch.distributed.all_reduce(value)
            return value[0].item() > 0

        loop.agree_to_stop = agree_to_stop
    elif fault:
        raise ValueError(f"unknown {FAULT_ENV}={fault!r}")
    if kill:
        rank, step, marker = kill.split(":", 2)
        train_step = loop._train_step

        def dying_step(ctx, *args, **kwargs):
            if ctx.rank == int(rank) and ctx.step == int(step) and not Path(marker).exists():
                Path(marker).write_text(f"rank {rank} killed before step {step}\n")
                _say(f"MNCLI_TEST_KILL: rank {rank} exits before step {step}")
                os._exit(1)
            return train_step(ctx, *args, **kwargs)

        loop._train_step = dying_step


# --- for the tests --------------------------------------------------------------------------------

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def torchrun(*args: str, nproc: int = 2, launcher: tuple[str, ...] = ("--standalone",)) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N ARGS...`."""
    return [*TORCHRUN, *launcher, "--nproc-per-node", str(nproc), *map(str, args)]


def worker_env(**extra: str) -> dict[str, str]:
    """The environment for a torchrun: this one (with the checker switched on by conftest), one
    thread per process, no rank variables of an enclosing run, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.setdefault(ENV, "1")
    tests = str(Path(__file__).resolve().parent)
    if tests not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (tests, env.get("PYTHONPATH")) if p)
    env["MNCLI_NUM_THREADS"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env
