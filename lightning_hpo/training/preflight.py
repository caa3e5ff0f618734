"""Preflight: build everything a run config names and train it for one batch, before any
real work, so a bad value is a one-line config error rather than a traceback from deep inside
``Trainer.fit`` and a half-written run folder.

One check per component, each on the configured device and each blaming the key it read:

1. **data**: the factory or DataModule builds and serves a training and a validation batch;
2. **net**: the network builds from ``net_config`` and takes a training batch forward;
3. **loss**: the criterion builds and scores the network's output against the targets;
4. **optimizer step** and **scheduler step**: both build from their ``*_config`` (a value
   the constructor rejects names its own key, e.g. ``optimizer_config.lr``), then the loss's
   backward pass, one optimizer step and one scheduler step run;
5. **Lightning**: the LightningModule and a ``fast_dev_run`` Trainer (with ``trainer_config``)
   train one batch and validate one batch, which shows the metric names the module logs.

A module that builds its own parts (``module_contract.builds_own_parts``) has no net, loss or
optimizer of the run's to check: its check is **module** (it builds from ``module_config``,
a value it rejects naming its key), then **Lightning**, which runs its own steps and its own
``configure_optimizers``.

A study checks its run config like this, then each corner of its search space (every
parameter at its low end, then at its high end, and each categorical choice once), so a
space that cannot even build is refused before trial 0. Nothing is written: the Trainer logs
nowhere and keeps no checkpoint. What needs real training (divergence, NaN losses) is left to
the run, where it stays a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lightning_hpo.config.run import RunConfig
from lightning_hpo.errors import ConfigError
from lightning_hpo.metrics import VAL_LOSS, logged_names, require_logged
from lightning_hpo.training.probe import blame, probe_kwargs

__all__ = [
    "Check",
    "Preflight",
    "format_preflight",
    "preflight_run",
    "preflight_study",
    "space_corners",
]


@dataclass(frozen=True)
class Check:
    """One passed check: what was built or run, what it showed, and how long it took."""

    name: str
    detail: str
    seconds: float


@dataclass
class Preflight:
    """The checks one run config passed, and the metrics its one batch logged."""

    label: str
    device: str
    source: str = "<run config>"
    checks: list[Check] = field(default_factory=list)
    parameters: int = 0  # the network's
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return math.fsum(c.seconds for c in self.checks)

    @contextlib.contextmanager
    def check(self, name: str) -> Iterator[list[str]]:
        """Time one check; the body appends its one-line detail to the yielded list."""
        start = time.perf_counter()
        detail: list[str] = []
        yield detail
        self.checks.append(Check(name, "; ".join(detail), time.perf_counter() - start))


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return (
        "[" + ", ".join(str(d) for d in shape) + "]" if shape is not None else type(value).__name__
    )


def _single_device(cfg: RunConfig) -> RunConfig:
    """The config on one device of its kind: the preflight needs no extra ranks."""
    return cfg.replace(devices=1, strategy="auto")


def _device(cfg: RunConfig):
    """The torch device a single-device run of ``cfg`` trains on."""
    import torch

    from lightning_hpo.config.lightning_args import accelerator_and_devices

    accelerator, devices = accelerator_and_devices(cfg.device, cfg.devices)
    if accelerator == "gpu":
        return torch.device(f"cuda:{devices[0] if isinstance(devices, list) else 0}")
    return torch.device("mps" if accelerator == "mps" else "cpu")


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _is_pair(batch: Any) -> bool:
    """Whether a batch is ``(x, y, ...)`` tensors, as the built-in module takes it."""
    import torch

    return (
        isinstance(batch, (list, tuple))
        and len(batch) >= 2
        and all(torch.is_tensor(t) for t in batch[:2])
    )


def _serve(cfg: RunConfig, seed: int):
    """``probe(data_config)``: the DataModule and its first training and validation batch."""
    from lightning_hpo.training.components import build_data
    from lightning_hpo.training.prepared import setup_outside_fit

    def serve(data_config: dict[str, Any]):
        dm = build_data(cfg.replace(data_config=data_config), seed)
        setup_outside_fit(dm)
        return dm, next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))

    return serve


def _check_parts(result: Preflight, cfg: RunConfig, source: str, dm, batch, device) -> None:
    """The net, loss, optimizer step and scheduler step, each on its own ``*_config``."""
    import torch

    from lightning_hpo.builtin.supervised import build_criterion, scheduler_arguments
    from lightning_hpo.training.components import build_net

    parts = cfg.components
    seed = cfg.seeds[0]
    x, y = (t.to(device) for t in batch[:2])

    def forward(net_config: dict[str, Any]):
        net = build_net(cfg.replace(net_config=net_config), dm, seed).to(device)
        return net, net(x)

    with result.check("net") as detail:
        net, pred = probe_kwargs(
            forward,
            cfg.net_config,
            source,
            "net_config",
            parts.net,
            f"{cfg.net} on a training batch {_shape(x)}",
        )
        result.parameters = sum(p.numel() for p in net.parameters())
        detail.append(f"{_short(cfg.net)}: {result.parameters:,} parameters, output {_shape(pred)}")

    def score(criterion_config: dict[str, Any]):
        loss = build_criterion(parts.criterion, criterion_config)(pred, y)
        if not (torch.is_tensor(loss) and loss.numel() == 1):
            raise TypeError(f"expected a scalar tensor, got {_shape(loss)}")
        return loss

    with result.check("loss") as detail:
        loss = probe_kwargs(
            score,
            cfg.criterion_config,
            source,
            "criterion_config" if cfg.criterion_config else "criterion",
            parts.criterion,
            f"{cfg.criterion} on the net's output {_shape(pred)} and the targets {_shape(y)}",
        )
        detail.append(f"{_short(cfg.criterion)} = {loss.item():.4g}")

    optimizer_cls = parts.optimizer
    with result.check("optimizer step") as detail:
        optimizer = probe_kwargs(
            lambda kw: optimizer_cls(list(net.parameters()), **kw),
            cfg.optimizer_config,
            source,
            "optimizer_config",
            optimizer_cls,
            cfg.optimizer,
        )
        scheduler = None
        if cfg.scheduler:
            scheduler_cls = parts.scheduler
            scheduler_config = scheduler_arguments(scheduler_cls, cfg.scheduler_config, cfg.epochs)

            def schedule(kw: dict[str, Any]) -> None:
                scratch = optimizer_cls(list(net.parameters()), **cfg.optimizer_config)
                scheduler = scheduler_cls(scratch, **kw)
                scratch.step()  # no gradients: only counts the step, as the schedule expects
                scheduler.step()

            probe_kwargs(
                schedule, scheduler_config, source, "scheduler_config", scheduler_cls, cfg.scheduler
            )
            scheduler = scheduler_cls(optimizer, **scheduler_config)
        with blame(source, "optimizer_config", f"{cfg.optimizer}'s step", "fix optimizer_config"):
            loss.backward()
            optimizer.step()
        detail.append(f"{_short(cfg.optimizer)} {cfg.optimizer_config}")

    if scheduler is not None:
        with result.check("scheduler step") as detail:
            with blame(
                source, "scheduler_config", f"{cfg.scheduler}'s step", "fix scheduler_config"
            ):
                scheduler.step()
            detail.append(f"{_short(cfg.scheduler)} {scheduler_config}")


def _check_own_module(result: Preflight, cfg: RunConfig, source: str) -> None:
    """A module that builds its own parts builds from ``module_config``."""
    cls = cfg.components.module
    with result.check("module") as detail:
        module = probe_kwargs(
            lambda kw: cls(**kw), cfg.module_config, source, "module_config", cls, cfg.module
        )
        result.parameters = sum(p.numel() for p in module.parameters())
        detail.append(
            f"{cls.__qualname__} {cfg.module_config}: {result.parameters:,} parameters, "
            "its own configure_optimizers"
        )


def _check_lightning(result: Preflight, cfg: RunConfig, source: str, dm) -> None:
    """The LightningModule trains and validates one batch in a ``fast_dev_run`` Trainer."""
    import torch

    from lightning_hpo.training.components import build_module
    from lightning_hpo.training.trainer import build_trainer

    with result.check("Lightning") as detail:
        with blame(source, "module", "building the LightningModule", "fix the run config"):
            module = build_module(cfg, dm, cfg.seeds[0])
        with tempfile.TemporaryDirectory(prefix="lightning-hpo-preflight-") as scratch:
            with blame(source, "trainer_config", "building the Trainer", "fix trainer_config"):
                trainer = build_trainer(
                    _single_device(cfg),
                    checkpointing=False,
                    fast_dev_run=1,
                    logger=False,
                    default_root_dir=scratch,
                )
            with blame(
                source,
                None,
                f"{type(module).__qualname__} training and validating one batch",
                "run with --debug for the traceback",
            ):
                trainer.fit(module, datamodule=dm)
        result.metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if torch.is_tensor(v) and v.numel() == 1
        }
        logged = ", ".join(sorted(result.metrics)) or "nothing"
        detail.append(f"{type(module).__qualname__} logs {logged}")


def preflight_run(
    cfg: RunConfig,
    source: str = "<run config>",
    label: str = "run config",
    monitor: str | None = VAL_LOSS,
) -> Preflight:
    """Build every component of ``cfg`` and train it for one batch (see the module doc).

    A batch that is not ``(x, y)`` tensors (a dict, say, for a module of your own) skips the
    component checks: the Lightning check then covers them. ``monitor`` is the metric the run
    checkpoints and early-stops on; the module must log it (None: the caller checks).

    Raises:
        ConfigError: naming the file and key of the first component that fails.
    """
    device = _device(cfg)
    result = Preflight(label, str(device), source)
    with result.check("data") as detail:
        dm, batch, val_batch = probe_kwargs(
            _serve(cfg, cfg.seeds[0]),
            cfg.data_config,
            source,
            "data_config",
            cfg.components.data,
            cfg.data,
        )
        if _is_pair(batch):
            x, y = batch[:2]
            dtype = str(y.dtype).removeprefix("torch.")
            detail.append(f"{_short(cfg.data)}: batch {_shape(x)} -> {_shape(y)} {dtype}")
            detail.append(f"validation batch {_shape(val_batch[0])}")
        else:
            detail.append(f"{_short(cfg.data)}: a {type(batch).__name__} batch, not (x, y)")
            detail.append("the module's own step checks the rest")
    if cfg.own_parts:
        _check_own_module(result, cfg, source)
    elif _is_pair(batch):
        _check_parts(result, cfg, source, dm, batch, device)
    _check_lightning(result, cfg, source, dm)
    if monitor is not None and monitor not in logged_names(result.metrics):
        logged = ", ".join(logged_names(result.metrics)) or "nothing"
        raise ConfigError(
            source,
            "module",
            f"{cfg.module} never logs {monitor!r}, which the run checkpoints and stops early "
            f"on (it logs {logged})",
            f"log {monitor} in validation (self.log({monitor!r}, ...) in validation_step), "
            "or tune on a metric it logs",
        )
    return result


def _corner_values(param) -> list[Any]:
    """A parameter's values in corner order: low end, high end, then categorical middles."""
    if param.type == "categorical":
        choices = list(param.choices)
        return [choices[0], choices[-1], *choices[1:-1]] if len(choices) > 1 else choices
    return [param.min, param.max]


def space_corners(opt, run: RunConfig) -> list[tuple[str, RunConfig, dict[str, Any]]]:
    """The search space's corners as run configs: every parameter at its low end, every one
    at its high end, then each categorical choice not yet seen (numbers at their high end)."""
    values = {p.name: _corner_values(p) for p in opt.params}
    count = max((len(v) for v in values.values()), default=0)
    corners: list[tuple[str, RunConfig, dict[str, Any]]] = []
    seen: list[dict[str, Any]] = []
    for k in range(count):
        chosen = {p.name: values[p.name][min(k, len(values[p.name]) - 1)] for p in opt.params}
        for p in opt.params:
            if p.type != "categorical" and k >= 2:
                chosen[p.name] = values[p.name][-1]
        if chosen in seen:
            continue
        seen.append(chosen)
        data = run.to_dict()
        for p in opt.params:
            value = chosen[p.name]
            p.apply(data, int(value) if p.type == "int" else value)
        label = ("low corner", "high corner")[k] if k < 2 else f"corner {k + 1}"
        corners.append((label, run.merged(data, label), chosen))
    return corners


def preflight_study(run: RunConfig, opt, run_source: str, opt_source: str) -> list[Preflight]:
    """The run config's preflight, the metric check, then each corner of the search space.

    Raises:
        ConfigError: for the run config's first failing component; for ``metric`` when the
            module never logs it (naming what it does log); for a corner that fails, naming
            the corner's values.
    """
    base = preflight_run(run, run_source, monitor=None)
    require_logged(opt.metric, base.metrics, opt_source)  # what trials monitor instead
    results = [base]
    for label, cfg, chosen in space_corners(opt, run):
        where = ", ".join(f"{k}={v!r}" for k, v in chosen.items())
        corner_source = f"{opt_source} (search space, {label}: {where})"
        result = preflight_run(cfg, corner_source, label, monitor=None)
        results.append(dataclasses.replace(result, label=f"{label}: {where}"))
    return results


def format_preflight(results: list[Preflight], space_source: str | None = None) -> str:
    """What was checked, as a short table: every check of the run config, then one line per
    corner of the search space (from ``space_source``, the optimize config)."""
    first, corners = results[0], results[1:]
    lines = [f"preflight of {first.source} on {first.device}:"]
    width = max(len(c.name) for c in first.checks)
    lines += [f"  {c.name:<{width}}  {c.seconds * 1000:5.0f} ms  {c.detail}" for c in first.checks]
    if corners:
        lines.append(f"search space of {space_source}, {len(corners)} corners:")
        lines += [
            f"  {r.seconds * 1000:5.0f} ms  {r.parameters:>10,} parameters  {r.label}"
            for r in corners
        ]
    total = math.fsum(r.seconds for r in results)
    lines.append(
        f"passed: {len(results)} config(s) built and trained for one batch in {total:.2f} s"
    )
    return "\n".join(lines)
