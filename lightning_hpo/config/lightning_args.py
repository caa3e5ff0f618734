"""The run config's ``trainer_config``: extra ``lightning.Trainer`` keyword arguments
(``precision``, ``gradient_clip_val``, ``accumulate_grad_batches``, ``deterministic``, ...).

Checked like the other ``*_config`` mappings, against ``Trainer``'s signature, and also by
type against its annotations, so ``gradient_clip_val: fast`` is a config error at load time
rather than a traceback from inside ``Trainer.fit``. Keywords this tool sets itself are
refused, each with the run-config key or flag to use instead (``OWNED``).
"""

from __future__ import annotations

import contextlib
import difflib
import math
import types
import typing
from collections.abc import Iterator
from typing import Any

from lightning_hpo.config.validation import fits_annotation, is_int
from lightning_hpo.console import banners_off
from lightning_hpo.errors import ConfigError

KEY = "trainer_config"

# Trainer keywords a user may not set, and why. Everything else Trainer takes passes through.
OWNED: dict[str, str] = {
    "max_epochs": "a run's length is the run config's epochs: set epochs",
    "max_steps": "a run lasts epochs epochs (its curves, the scheduler's T_max and the pruner count them): set epochs",
    "max_time": "a run lasts epochs epochs (its curves, the scheduler's T_max and the pruner count them): set epochs",
    "accelerator": "set the run config's device",
    "devices": "set the run config's devices (and device)",
    "strategy": "set the run config's strategy",
    "num_nodes": "a run trains on one machine: set devices and strategy",
    "logger": "list them under the run config's loggers (each seed gets its own run in each)",
    "callbacks": "list them under the run config's callbacks",
    "enable_checkpointing": "use checkpoint_config",
    "default_root_dir": "runs go under --output",
    "enable_progress_bar": "pass --progress",
    "plugins": "lightning-hpo sets the Trainer's plugins: set precision with trainer_config.precision",
    "fast_dev_run": "it turns off the logging and checkpoints a run records: pass --epochs 1",
    "barebones": "it turns off the logging and checkpoints a run records",
    "val_check_interval": "validation runs once per epoch (curves, checkpoints and the pruner count epochs): use check_val_every_n_epoch",
    "overfit_batches": "it validates on training batches, so val metrics would no longer measure validation",
    "use_distributed_sampler": "the data gives each device its share of the batches itself",
}

# Precisions that keep fused seeds independent: no loss scaler shared by every seed.
FUSABLE_PRECISIONS = {None, 32, 64, "32", "64", "32-true", "64-true", "bf16", "bf16-mixed", "bf16-true", "16-true"}  # fmt: skip


# Numbers the Trainer accepts at construction and only fails on (or silently misuses) in fit.
_AT_LEAST = {
    "accumulate_grad_batches": 1,
    "check_val_every_n_epoch": 1,
    "log_every_n_steps": 1,
    "gradient_clip_val": 0,
    "min_epochs": 0,
    "min_steps": 0,
    "reload_dataloaders_every_n_epochs": 0,
}


# Trainer keywords whose 0 turns off what every epoch records: the Trainer takes it, and the
# preflight's one-batch run (fast_dev_run) overrides it, so only this check catches it.
NOT_ZERO: dict[str, str] = {
    "limit_train_batches": "0 trains no batch, so the run would record nothing",
    "limit_val_batches": "0 skips validation, so no epoch would record the monitored metric "
    "(curves, checkpoints and the pruner read it)",
}


def _trainer():
    import lightning.pytorch as pl

    return pl.Trainer


# Trainer keywords a study cannot take, and why: train.py accepts them.
NOT_WHEN_TUNING: dict[str, str] = {
    "check_val_every_n_epoch": "a study's pruner and report read one validation value per epoch "
    "(remove it, or set it to 1, to tune; train.py takes it)",
}


def check_tunable(options: dict[str, Any], source: str) -> None:
    """Refuse a ``trainer_config`` a study cannot tune with (``NOT_WHEN_TUNING``)."""
    for key, why in NOT_WHEN_TUNING.items():
        if key in options and options[key] != 1:
            raise ConfigError(source, f"{KEY}.{key}", f"{options[key]!r} cannot be tuned with", why)


def check_owned(options: dict[str, Any], source: str) -> None:
    """Refuse a keyword this tool sets itself, saying what to use instead. Needs no import."""
    for key in options:
        if key in OWNED:
            raise ConfigError(
                source, f"{KEY}.{key}", "is set by lightning-hpo, not trainer_config", OWNED[key]
            )


def check_not_zero(options: dict[str, Any], source: str) -> None:
    """Refuse a 0 that turns off what every epoch records (``NOT_ZERO``). Needs no import, so
    a searched range that reaches 0 is refused with the optimize config."""
    for key, why in NOT_ZERO.items():
        value = options.get(key)
        if value is not None and value == 0 and not isinstance(value, bool):
            raise ConfigError(
                source,
                f"{KEY}.{key}",
                f"must not be 0: {why}",
                f"remove {KEY}.{key}, or give a number of batches >= 1 or a fraction in (0, 1]",
            )


def check_validates(options: dict[str, Any], epochs: int, source: str) -> None:
    """Refuse a ``check_val_every_n_epoch`` longer than the run: no epoch would record the
    monitored metric. Needs no import."""
    every = options.get("check_val_every_n_epoch")
    if is_int(every) and every > epochs:
        raise ConfigError(
            source,
            f"{KEY}.check_val_every_n_epoch",
            f"{every} is more than epochs ({epochs}), so no epoch would record the "
            "monitored metric",
            f"set it to at most {epochs}, or remove it",
        )


def check_types(options: dict[str, Any], source: str) -> None:
    """Check each value against ``Trainer.__init__``'s annotation, where it is a plain type."""
    hints = typing.get_type_hints(_trainer().__init__)
    for key, value in options.items():
        if key in hints and fits_annotation(value, hints[key]) is False:
            raise ConfigError(
                source,
                f"{KEY}.{key}",
                f"lightning.Trainer takes {_describe(hints[key])}, got {value!r}",
                f"fix {KEY}.{key}",
            )
        low = _AT_LEAST.get(key)
        if low is not None and value is not None and not (math.isfinite(value) and value >= low):
            raise ConfigError(
                source,
                f"{KEY}.{key}",
                f"must be a finite number >= {low}, got {value!r}",
                f"fix {KEY}.{key}",
            )


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


@contextlib.contextmanager
def trainer_errors(options: dict[str, Any], source: str = "<run config>") -> Iterator[None]:
    """A Trainer that rejects the user's ``trainer_config`` at construction: a ConfigError."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except ConfigError:
        raise
    except (TypeError, ValueError, MisconfigurationException, RuntimeError) as exc:
        if not options:
            raise
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ConfigError(
            source,
            KEY,
            f"lightning.Trainer rejected {options}: {first}",
            f"fix {KEY}",
        ) from None


def check_trainer_config(
    options: dict[str, Any], accelerator: str, devices: Any, source: str
) -> None:
    """Everything about ``trainer_config`` short of training: owned keys, names (with the
    nearest one), types, and a Trainer built with them on the run's accelerator, which
    writes nothing."""
    from lightning_hpo.config.imports import check_kwargs

    check_owned(options, source)
    check_not_zero(options, source)
    if not options:
        return
    trainer_cls = _trainer()
    check_kwargs(trainer_cls, options, source, KEY, skip=tuple(OWNED), require=False)
    check_types(options, source)
    with banners_off(), trainer_errors(options, source):
        trainer_cls(
            accelerator=accelerator,
            devices=devices,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **options,
        )


def fusion_blocker(options: dict[str, Any]) -> str | None:
    """Why these Trainer options would couple fused seeds, or None.

    Norm clipping is done per seed (``fused.FusedModule.configure_gradient_clipping``), value
    clipping and gradient accumulation are per element; ``16-mixed`` scales every seed's
    loss with one GradScaler, which skips every seed's step when one seed's gradient
    overflows, so it cannot be fused.
    """
    precision = options.get("precision")
    if precision not in FUSABLE_PRECISIONS:
        return f"trainer_config.precision {precision!r} scales the loss with one GradScaler for every seed (one seed's overflow would skip all seeds' steps)"
    return None


def accelerator_and_devices(device: str, devices: int | str) -> tuple[str, Any]:
    """Map a run config's ``device``/``devices`` onto Lightning's accelerator and devices."""
    if device in ("cpu", "mps"):
        return device, devices
    if device == "auto":
        import torch

        return ("gpu" if torch.cuda.is_available() else "cpu"), devices
    if ":" in device:
        return "gpu", [int(device.split(":")[1])]
    return "gpu", devices


def check_strategy(strategy: str, source: str) -> None:
    """A Lightning strategy name, so a typo fails now rather than in every trial."""
    if strategy == "auto":
        return
    from lightning.pytorch.strategies import StrategyRegistry

    names = StrategyRegistry.available_strategies()
    if strategy not in names:
        near = difflib.get_close_matches(strategy, names, n=1, cutoff=0.5)
        fix = (
            f"did you mean '{near[0]}'?"
            if near
            else "use auto, or ddp_spawn with devices: 2 or more"
        )
        raise ConfigError(source, "strategy", f"{strategy!r} is not a Lightning strategy", fix)


def check_device(device: str, source: str) -> None:
    """Refuse a GPU on a machine without one, before anything trains."""
    if device in ("auto", "cpu"):
        return
    import torch

    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(
                source,
                "device",
                "asks for mps but this machine has no Apple GPU",
                "use device: auto or cpu",
            )
        return
    count = torch.cuda.device_count()
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= count:
        have = f"{count} CUDA device(s)" if count else "no CUDA GPU"
        raise ConfigError(
            source,
            "device",
            f"asks for {device!r} but this machine has {have}",
            "use device: auto (the GPU when present, else the CPU) or cpu",
        )


def rank_count(device: str, devices: int | str | list) -> int:
    """How many processes a run of ``device``/``devices`` trains on (``devices: auto`` takes
    every GPU there is, and one CPU process)."""
    accelerator, devices = accelerator_and_devices(device, devices)
    if isinstance(devices, list):
        return len(devices)
    if devices == "auto":
        import torch

        return max(1, torch.cuda.device_count()) if accelerator == "gpu" else 1
    return int(devices)


def outside_launcher() -> str | None:
    """The launcher that started this process as one of several ranks (``torchrun``, an
    ``srun`` of several tasks, ``mpirun``), or None when it runs alone."""
    import os

    env = os.environ
    if int(env.get("WORLD_SIZE", "1") or 1) > 1 and "LOCAL_RANK" in env:
        return f"torchrun (WORLD_SIZE={env['WORLD_SIZE']})"
    # A job step of several tasks (srun -n N); the batch script itself is one process.
    if int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1 and env.get("SLURM_STEP_ID") not in (
        None,
        "batch",
        "extern",
    ):
        return f"srun with {env['SLURM_STEP_NUM_TASKS']} tasks"
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if int(env.get(name, "1") or 1) > 1:
            return f"mpirun ({name}={env[name]})"
    return None
