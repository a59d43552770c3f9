"""Where and how the loop runs: device, threads, precision, memory format, and DDP under torchrun.

CPU defaults (measured by bench/train_throughput.py): channels_last, and bfloat16 autocast when the
processor has native bf16 (AVX512-BF16 / AMX / Arm BF16 in its flags, and oneDNN supports it), with
strided depthwise convs routed around oneDNN's slow bf16 input gradient (depthwise.py), global
average pools whose gradient keeps the input's layout (pooling.py), and batch norms with few
channels computed in NCHW (batchnorm.py). CUDA: fp16 AMP with a grad scaler (bf16 where the GPU
has it), channels_last, pinned memory.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from dataclasses import dataclass

import torch

from mncli.engine.distributed import init_group
from mncli.errors import BadInput
from mncli.host import available_cores


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    threads: int
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    allocator: str = "default"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]
        return {
            "device": str(self.device),
            "precision": precision,
            "channels_last": self.channels_last,
            "threads": self.threads,
            "world_size": self.world_size,
            "allocator": self.allocator,
            "torch": torch.__version__,
        }


def distributed_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as torchrun sets them; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


# Flags of native bfloat16 arithmetic in /proc/cpuinfo: x86 AVX512-BF16 and AMX, Arm's BF16 extension.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The processor's feature flags from /proc/cpuinfo (x86 "flags", Arm "Features"); None elsewhere."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def onednn_bf16() -> bool:
    """oneDNN can run bf16 on this CPU, natively or emulated with AVX-512."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_bf16() -> bool:
    """True when bf16 runs natively: oneDNN supports it and the processor has the instructions.

    oneDNN's own check is not enough for the default: it also says yes where it emulates bf16, and
    emulated bf16 autocast trains slower than fp32. Where no flags can be read (not Linux), oneDNN's
    word is taken."""
    flags = cpu_flags()
    return onednn_bf16() and (flags is None or bool(flags & NATIVE_BF16_FLAGS))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"unknown device {name!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput("--device cuda but no CUDA GPU is available", hint="use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise BadInput(f"unsupported device {name!r}", hint="use auto, cpu, cuda or cuda:N")
    return device


def configure(device: str = "auto", precision: str = "auto", channels_last: bool | None = None) -> Runtime:
    """Pick the device, thread count and precision; join the DDP group when run by torchrun."""
    rank, local_rank, world = distributed_env()
    dev = resolve_device(device, local_rank)
    threads = int(os.environ.get("MNCLI_NUM_THREADS") or 0)
    if threads <= 0:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        threads = max(1, available_cores() // max(1, local_world))
    torch.set_num_threads(threads)
    allocator = "tuned" if dev.type == "cpu" and tune_cpu_allocator() else "default"
    if precision == "auto":
        if dev.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp16" and dev.type == "cpu":
        raise BadInput("fp16 autocast is for CUDA", hint="on CPU use --precision bf16 or fp32")
    if precision == "bf16" and dev.type == "cpu" and not onednn_bf16():
        raise BadInput("this CPU cannot run bfloat16", hint="use --precision fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if world > 1 and not torch.distributed.is_initialized():
        init_group(dev, rank, world)
    cl = True if channels_last is None else channels_last
    return Runtime(dev, dtype, cl, threads, rank, local_rank, world, allocator)


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache  # process-wide: once is enough, however many fits a stage runs
def tune_cpu_allocator() -> bool:
    """Keep freed activation buffers in the heap for the next step instead of returning them to the OS.

    With glibc's defaults every buffer above a few MB is a fresh mmap, so each training step
    page-faults its activations in again (zero-filling 15 MB took 19 ms of a 100 ms step here); the
    settings below are what the usual advice of preloading jemalloc/tcmalloc achieves, without the
    preload. The heap then stays at its peak size until the process exits. MNCLI_MALLOC_TUNING=0
    turns this off; a no-op where the C library is not glibc."""
    if os.environ.get("MNCLI_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)


def uses_4d_inputs(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
