"""Trained networks back from run folders: ``load_run(run_dir)`` for inference.

A run folder (``runs/<project>/<group>/<seed>/``, a study's trial seeds included) holds
``config.yaml`` and ``checkpoints/best.ckpt`` and ``last.ckpt``; a fused run's seed folder
holds that seed's slice only, so every folder loads the same way.

A module that builds its own parts (``module_contract.builds_own_parts``) has no ``net`` of
the run's: ``load_run`` returns the module itself, loaded by its own ``load_from_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_hpo.config.module_contract import DEFAULT_MODULE
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.files import BEST, CHECKPOINT_DIR, CONFIG_FILE, LAST, checkpoint_file

_NET_PREFIX = "net."  # the module keeps its network as ``self.net`` (the module contract)


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    """``run_dir/checkpoints/<which>.ckpt``, or a ConfigError saying what the folder lacks."""
    source = str(run_dir)
    if which not in (BEST, LAST):
        raise ConfigError(
            source,
            "which",
            f"expected 'best' or 'last', got {which!r}",
            "use which='best' or 'last'",
        )
    folder = Path(run_dir)
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(
            source,
            None,
            "is not a run folder (no config.yaml)",
            "pass one seed's folder, e.g. runs/<project>/<group>/<seed>",
        )
    path = checkpoint_file(folder, which)
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob("*.ckpt"))
        raise ConfigError(
            source,
            None,
            f"has no {CHECKPOINT_DIR}/{path.name}"
            + (f" (it has {', '.join(present)})" if present else " (no checkpoints at all)"),
            "train with checkpoint_config save_best/save_last: true, or ask for the one it has",
        )
    return path


def load_run(run_dir: str | Path, which: str = "best", map_location: Any = "cpu"):
    """The trained network of a run folder, in eval mode, ready for inference.

    The network is rebuilt from the ``run_config`` the module saved as a hyperparameter
    (its ``net_config`` includes the sizes taken from the data), or, for a module that
    saves none, from the folder's ``config.yaml`` and its data; then the checkpoint's
    ``net.*`` weights are loaded, strictly.

    Args:
        run_dir: one seed's folder, ``runs/<project>/<group>/<seed>``.
        which: ``"best"`` (the best epoch by the monitored metric) or ``"last"``.
        map_location: where the weights go, as for ``torch.load``.

    Returns:
        The ``nn.Module`` (``module.net`` of the trained LightningModule), in eval mode; for a
        module that builds its own parts, the LightningModule itself, loaded by its own
        ``load_from_checkpoint`` with the run's ``module_config`` (``own_module``).

    Raises:
        ConfigError: the folder is not a run folder or lacks the checkpoint.
    """
    import torch

    from lightning_hpo.config.imports import resolve

    path = checkpoint_path(run_dir, which)
    module = own_module(Path(run_dir), path, map_location)
    if module is not None:
        return module
    # Our own files, written by Lightning: optimizer and loop states need full unpickling.
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    saved = checkpoint.get("hyper_parameters", {}).get("run_config")
    if saved is not None:
        net = resolve(saved["net"])(**saved["net_config"])
    else:
        net = _net_from_folder(Path(run_dir))
    state = {
        k.removeprefix(_NET_PREFIX): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(_NET_PREFIX)
    }
    if not state:
        raise ConfigError(
            str(path),
            "state_dict",
            "holds no net.* weights: the module keeps its network under another name",
            "keep the network as self.net (the module contract), or load the checkpoint yourself",
        )
    net.load_state_dict(state)
    # A device moves the network there; a dict or function only placed the checkpoint's
    # tensors for loading, and the network stays where it was built (the CPU).
    if isinstance(map_location, (str, torch.device)):
        net = net.to(map_location)
    return net.eval()


def _net_from_folder(run_dir: Path):
    """The run's network built from its config.yaml, sized from its data."""
    from lightning_hpo.config.run import run_config_from_dict
    from lightning_hpo.config.yamlio import load_yaml
    from lightning_hpo.training.components import build_data, build_net

    path = run_dir / CONFIG_FILE
    cfg = run_config_from_dict(load_yaml(path), str(path))
    return build_net(cfg, build_data(cfg, cfg.seeds[0]), cfg.seeds[0])


def own_module(run_dir: Path, path: Path, map_location: Any = "cpu"):
    """The run's module loaded from checkpoint ``path`` by its own ``load_from_checkpoint``
    (``module_config`` from ``config.yaml`` given as its arguments, so a module that saves no
    hyperparameters loads too), in eval mode; None for a module that takes the run's parts."""
    from lightning_hpo.config.imports import resolve
    from lightning_hpo.config.module_contract import builds_own_parts
    from lightning_hpo.config.yamlio import load_yaml

    config = run_dir / CONFIG_FILE
    saved = load_yaml(config)
    cls = resolve(saved.get("module", DEFAULT_MODULE), str(config), "module")
    if not builds_own_parts(cls):
        return None
    module = cls.load_from_checkpoint(
        path, map_location=map_location, weights_only=False, **saved.get("module_config", {})
    )
    return module.eval()
