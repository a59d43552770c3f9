"""`fit`: the one training loop every training stage runs (see callbacks.py for the plug-in points)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mncli.engine import batchnorm, depthwise, distributed, forwards, pooling, runtime, strided_pointwise
from mncli.engine import checkpoint as ckpt
from mncli.engine.callbacks import Callback, Context
from mncli.engine.config import TrainConfig
from mncli.engine.evaluate import evaluate
from mncli.engine.losses import classification_loss, distillation_loss
from mncli.engine.optim import build_optimizer, lr_factor, param_groups, set_lr
from mncli.engine.stopping import StopSignal, agree_to_stop, check_resumable, interrupted
from mncli.errors import BadInput, RuntimeFailure
from mncli.log import log, progress


@dataclass
class FitResult:
    history: list[dict]
    best_state: dict | None
    best_val_acc: float
    best_epoch: int
    final: dict
    runtime: dict
    wall_time: float
    steps: int


def fit(
    model: torch.nn.Module,
    data,
    cfg: TrainConfig,
    callbacks: list[Callback] | tuple = (),
    teacher: torch.nn.Module | None = None,
    ckpt_dir=None,
    resume: bool = False,
    resume_hint: str | None = None,
    show_progress: bool = True,
) -> FitResult:
    """Train `model` in place on `data.train`, validating on `data.val` after each epoch.

    Checkpoints go to `ckpt_dir` after every epoch and on SIGINT/SIGTERM (then TrainingInterrupted);
    `resume=True` continues from it, and so does a job torchrun restarted (--max-restarts; its
    TORCHELASTIC_RESTART_COUNT > 0) when the checkpoint there was written by this job. The model ends
    with its last weights; `best_state` holds the best-on-validation ones (when cfg.keep_best).
    Under torchrun every collective is on the rank's device (see distributed.py); `cfg.sync_bn`
    normalises BatchNorm with the statistics of all ranks' batches."""
    cfg.validate()
    callbacks = list(callbacks)
    rt = runtime.configure(cfg.device, cfg.precision, cfg.channels_last)
    model.to(rt.device)
    channels_last = rt.channels_last and runtime.uses_4d_inputs(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    patched = []
    if rt.device.type == "cpu":
        patched += pooling.patch_global_pools(model)
    if rt.device.type == "cpu" and rt.autocast_dtype is torch.bfloat16:
        patched += depthwise.patch_depthwise(model)
    if teacher is not None:
        teacher.to(rt.device).eval().requires_grad_(False)
        if channels_last:
            teacher.to(memory_format=torch.channels_last)
        if patched:
            patched += depthwise.patch_depthwise(teacher)
    if cfg.sync_bn:
        if rt.world_size > 1:
            patched += distributed.sync_batchnorm(model)
        elif rt.is_main:
            log("--sync-bn: one process, so BatchNorm is left as it is")
    if rt.device.type == "cpu" and channels_last:
        patched += batchnorm.patch_narrow_batchnorms(model)
        patched += strided_pointwise.patch_strided_pointwise(model)
    forward_model = model
    if rt.world_size > 1:
        forward_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            # a model whose steps leave parameters unused (the search's one sampled path) says so
            find_unused_parameters=bool(getattr(model, "ddp_find_unused_parameters", False)),
        )
    optimizer = build_optimizer(param_groups(model, cfg, callbacks), cfg)
    scaler = torch.amp.GradScaler("cuda") if rt.autocast_dtype is torch.float16 else None
    if rt.device.type == "cuda":
        for split in (data.train, data.val):
            split.pin()

    drop_last = (
        cfg.drop_last and data.train.num_batches(cfg.batch_size, world_size=rt.world_size, drop_last=True) > 0
    )
    steps_per_epoch = data.train.num_batches(cfg.batch_size, world_size=rt.world_size, drop_last=drop_last)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise BadInput("the training split is empty", hint="use a larger --subset")

    ctx = Context(
        model=model,
        forward_model=forward_model,
        optimizer=optimizer,
        data=data,
        cfg=cfg,
        device=rt.device,
        autocast_dtype=rt.autocast_dtype,
        teacher=teacher,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * cfg.epochs,
        rank=rt.rank,
        world_size=rt.world_size,
    )
    history: list[dict] = []
    best = {"acc": -1.0, "epoch": -1, "state": None}
    start_epoch, start_batch, partial = 0, 0, [0.0, 0.0, 0.0]
    state = None if resume else _restarted_job_checkpoint(ckpt_dir)
    if state is not None and rt.is_main:
        log(f"torchrun restarted the job (attempt {distributed.elastic_restart() + 1}): resuming")
    if resume or state is not None:
        if ckpt_dir is None:
            raise BadInput("--resume needs an output path", hint="give the same -o as the interrupted run")
        state = state or ckpt.load_checkpoint(ckpt_dir)
        check_resumable(state, cfg)
        _restore(state, Path(ckpt_dir) / ckpt.FILE, model, optimizer, scaler, callbacks, cfg, steps_per_epoch)
        start_epoch, start_batch = int(state["epoch"]), int(state["batch"])
        partial = list(state["partial"])
        history = list(state["history"])
        best = {
            "acc": float(state["best_acc"]),
            "epoch": int(state["best_epoch"]),
            "state": state.get("best_state"),
        }
        if rt.is_main:
            log(f"resuming from {ckpt_dir} at epoch {start_epoch + 1}, batch {start_batch}")

    def save(epoch: int, batch: int, sums: list[float]) -> None:
        if ckpt_dir is None or not rt.is_main:
            return
        state = {
            "model": ckpt.clone_state(model),
            "optimizer": optimizer.state_dict(),
            "callbacks": [cb.state_dict() for cb in callbacks],
            "callback_types": _callback_types(callbacks),
            "rng": ckpt.rng_state(),
            "epoch": epoch,
            "batch": batch,
            "partial": sums,
            "history": history,
            "best_acc": best["acc"],
            "best_epoch": best["epoch"],
            "config": cfg.to_dict(),
        }
        if distributed.run_id() is not None:
            state["run_id"] = distributed.run_id()
        if best["state"] is not None:
            state["best_state"] = best["state"]
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        ckpt.save_checkpoint(ckpt_dir, state)

    started = time.perf_counter()
    try:
        for callback in callbacks:
            callback.on_train_start(ctx)
        with StopSignal() as stop, progress() as bar:
            show = show_progress and rt.is_main
            for epoch in range(start_epoch, cfg.epochs):
                ctx.epoch = epoch
                ctx.best_eligible = True
                sums = partial if epoch == start_epoch else [0.0, 0.0, 0.0]
                task = bar.add_task(
                    f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch, status="", visible=show
                )
                bar.update(task, completed=start_batch if epoch == start_epoch else 0)
                epoch_start, seen = time.perf_counter(), 0
                batches = data.train.batches(
                    cfg.batch_size,
                    epoch=epoch,
                    seed=cfg.seed,
                    start=start_batch if epoch == start_epoch else 0,
                    rank=rt.rank,
                    world_size=rt.world_size,
                    device=rt.device,
                    drop_last=drop_last,
                    channels_last=channels_last,
                )
                model.train()
                for batch_index, (x, y) in enumerate(
                    batches, start=start_batch if epoch == start_epoch else 0
                ):
                    if batch_index >= steps_per_epoch:
                        break
                    loss_value, correct = _train_step(ctx, x, y, epoch, batch_index, callbacks, scaler)
                    sums[0] += loss_value * y.numel()
                    sums[1] += correct
                    sums[2] += y.numel()
                    seen += y.numel()
                    if show and (batch_index % 5 == 0 or batch_index + 1 == steps_per_epoch):
                        rate = seen * rt.world_size / max(1e-9, time.perf_counter() - epoch_start)
                        bar.update(
                            task,
                            completed=batch_index + 1,
                            status=(
                                f"{rate:,.0f} img/s  loss {sums[0] / sums[2]:.3f}"
                                f"  acc {100 * sums[1] / sums[2]:.1f}%"
                            ),
                        )
                    if agree_to_stop(stop.signum is not None, rt.world_size, rt.device):
                        save(epoch, batch_index + 1, sums)
                        raise interrupted(stop.signum, epoch, batch_index + 1, ckpt_dir, resume_hint)
                    if ctx.stop_training:
                        break
                bar.update(task, visible=False)
                metrics = _epoch_metrics(
                    ctx, sums, rt, channels_last, data, time.perf_counter() - epoch_start, seen
                )
                for callback in callbacks:
                    callback.on_epoch_end(ctx, metrics)
                history.append(metrics)
                score = metrics.get("val_acc", metrics["train_acc"])
                if cfg.keep_best and ctx.best_eligible and score > best["acc"]:
                    best = {"acc": score, "epoch": epoch + 1, "state": ckpt.clone_state(model)}
                if rt.is_main:
                    log(_epoch_line(metrics, cfg.epochs))
                start_batch = 0
                save(epoch + 1, 0, [0.0, 0.0, 0.0])
                if ctx.stop_training:
                    break
        for callback in callbacks:
            callback.on_train_end(ctx)
    finally:
        forwards.restore_forward(patched)
        if channels_last:  # hand the models back in the ordinary layout
            for module in (model, teacher):
                if module is not None:
                    module.to(memory_format=torch.contiguous_format)
    final = history[-1] if history else {}
    return FitResult(
        history=history,
        best_state=best["state"],
        best_val_acc=best["acc"],
        best_epoch=best["epoch"],
        final=final,
        runtime=rt.describe(),
        wall_time=time.perf_counter() - started,
        steps=len(history) * steps_per_epoch,
    )


def _restarted_job_checkpoint(ckpt_dir) -> dict | None:
    """In a job torchrun restarted: its checkpoint, when one exists and was written by this job (the
    same TORCHELASTIC_RUN_ID), not left over from another run; else None."""
    if ckpt_dir is None or distributed.elastic_restart() <= 0 or distributed.run_id() is None:
        return None
    if not (Path(ckpt_dir) / ckpt.FILE).is_file():
        return None
    state = ckpt.load_checkpoint(ckpt_dir)
    return state if state.get("run_id") == distributed.run_id() else None


def _callback_types(callbacks) -> list[str]:
    return [type(cb).__qualname__ for cb in callbacks]


def _restore(state: dict, path: Path, model, optimizer, scaler, callbacks, cfg: TrainConfig, steps: int):
    """Put a checkpoint's state into this run, or one BadInput line when it was written by another
    run: another architecture (keys or shapes), another stage (its callbacks), another length."""
    hint = f"resume with the command of the interrupted run, or delete {path.parent}"
    for key in ("model", "best_state"):
        if key in state:
            problem = _state_mismatch(model.state_dict(), state[key])
            if problem:
                raise BadInput(f"checkpoint {path} was written for another model: {problem}", hint=hint)
    # Every callback of this run needs the state of one of its kind at its place; trailing states of
    # callbacks this run does not have may only be empty (a stateless helper, not another method).
    saved = state.get("callback_types")
    now = _callback_types(callbacks)
    extra = state["callbacks"][len(callbacks) :]
    if (
        (saved is not None and list(saved)[: len(now)] != now)
        or len(state["callbacks"]) < len(callbacks)
        or any(extra)
    ):
        shown = (", ".join(saved) or "none") if saved is not None else str(len(state["callbacks"]))
        raise BadInput(
            f"checkpoint {path} was written by another kind of run (callbacks {shown}; this run has "
            f"{', '.join(now) or 'none'})",
            hint=hint,
        )
    if not (0 <= int(state["epoch"]) <= cfg.epochs and 0 <= int(state["batch"]) <= steps):
        raise BadInput(
            f"checkpoint {path} stopped at epoch {state['epoch']}, batch {state['batch']}, outside this run "
            f"({cfg.epochs} epochs of {steps} batches)",
            hint=hint,
        )
    part = "model"
    try:
        model.load_state_dict(state["model"])
        part = "optimiser"
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            part = "gradient scaler"
            scaler.load_state_dict(state["scaler"])
        for callback, cb_state in zip(callbacks, state["callbacks"], strict=False):
            part = f"{type(callback).__qualname__} state"
            callback.load_state_dict(cb_state)
        part = "random generator state"
        ckpt.set_rng_state(state["rng"])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        lines = str(exc).strip().splitlines()
        reason = (lines[0] if lines else type(exc).__name__)[:100]
        raise BadInput(f"checkpoint {path}: its {part} does not fit this run ({reason})", hint=hint) from None


def _state_mismatch(expected: dict, saved: dict) -> str | None:
    """What differs between two state dicts' keys and shapes (first few), or None."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [k for k in expected if k in saved and tuple(expected[k].shape) != tuple(saved[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{k} is {list(saved[k].shape)} there, {list(expected[k].shape)} here")
    return "; ".join(parts) or None


def _train_step(ctx: Context, x, y, epoch: int, batch_index: int, callbacks, scaler) -> tuple[float, float]:
    cfg = ctx.cfg
    ctx.x, ctx.y = x, y
    ctx.batch_index = batch_index
    ctx.step = epoch * ctx.steps_per_epoch + batch_index
    ctx.lr_scale = lr_factor(cfg, ctx.step, ctx.steps_per_epoch)
    set_lr(ctx.optimizer, ctx.lr_scale)
    for callback in callbacks:
        callback.before_step(ctx)
    x, y = ctx.x, ctx.y
    with ctx.autocast():
        logits = ctx.forward_model(x)
        if ctx.teacher is not None:
            with torch.no_grad():
                teacher_logits = ctx.teacher(x)
            loss = distillation_loss(
                logits,
                teacher_logits,
                y,
                temperature=cfg.kd_temperature,
                student_weight=cfg.kd_student_weight,
                distill_weight=cfg.kd_distill_weight,
                label_smoothing=cfg.label_smoothing,
            )
        else:
            loss = classification_loss(logits, y, cfg.label_smoothing)
        for callback in callbacks:
            extra = callback.extra_loss(ctx, logits, y)
            if extra is not None:
                loss = loss + extra
    ctx.logits, ctx.loss = logits, loss
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise RuntimeFailure(
            f"the loss became {loss_value} at epoch {epoch + 1}, batch {batch_index + 1}"
            f" (step {ctx.step + 1})",
            hint="lower --lr, add --grad-clip 5, or use --precision fp32",
        )
    ctx.optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()
    for callback in callbacks:
        callback.after_backward(ctx)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), cfg.grad_clip)
    if scaler is not None:
        scaler.step(ctx.optimizer)
        scaler.update()
    else:
        ctx.optimizer.step()
    for callback in callbacks:
        callback.after_step(ctx)
    correct = (logits.detach().argmax(1) == y).sum().item()
    return loss_value, float(correct)


def _epoch_metrics(ctx: Context, sums, rt, channels_last: bool, data, seconds: float, seen: int) -> dict:
    totals = distributed.all_reduce_sum(sums, rt.device, rt.world_size)
    count = max(1.0, totals[2])
    metrics = {
        "epoch": ctx.epoch + 1,
        "train_loss": totals[0] / count,
        "train_acc": totals[1] / count,
        "lr": ctx.cfg.lr * ctx.lr_scale,
        "seconds": round(seconds, 3),
        "images_per_s": round(seen * rt.world_size / max(seconds, 1e-9), 1),
    }
    if len(data.val) > 0:
        val = evaluate(
            ctx.model,
            data.val,
            rt.device,
            batch_size=max(256, ctx.cfg.batch_size),
            channels_last=channels_last,
            rank=rt.rank,
            world_size=rt.world_size,
        )
        metrics.update(val_acc=val["top1"], val_top5=val["top5"], val_loss=val["loss"])
    return metrics


def _epoch_line(m: dict, epochs: int) -> str:
    val = f"  val {100 * m['val_acc']:.2f}%" if "val_acc" in m else ""
    return (
        f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  train {100 * m['train_acc']:.2f}%{val}"
        f"  lr {m['lr']:.4g}  {m['images_per_s']:,.0f} img/s  {m['seconds']:.0f}s"
    )
