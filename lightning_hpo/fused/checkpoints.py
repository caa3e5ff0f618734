"""Fused seeds' checkpoints: each seed's folder holds that seed's own one-seed checkpoints, stacked back together for --resume."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_hpo.fused.seeds import SeedStates, seed_metric
from lightning_hpo.fused.stacking import (
    merge_optimizer_states,
    merge_states,
    split_optimizer_state,
    split_state,
)
from lightning_hpo.training.callbacks import improved as improved_on
from lightning_hpo.training.checkpoint_io import AtomicCheckpointIO
from lightning_hpo.training.files import BEST, LAST, checkpoint_file

# Written into each seed's checkpoint of a fused run: which slice it is, and what --resume needs.
FUSED_KEY = "lightning_hpo/fused"


class SeedCheckpointIO(AtomicCheckpointIO):
    """Checkpoints of a fused run: a file in seed ``s``'s folder holds seed ``s`` alone.

    Its ``state_dict`` and optimizer state are that seed's slices (the single network's
    keys and shapes, loadable into a one-seed module); loops, schedulers and callback
    states are the run's. Loading a file from one seed's folder stacks the same file of
    every seed's folder back into the fused state, for ``--resume``.
    """

    def __init__(self, run_dirs: Sequence[Path], shapes: Sequence[torch.Size]):
        super().__init__()
        self.run_dirs = [Path(d).resolve() for d in run_dirs]
        self.shapes = list(shapes)

    def _index(self, path: Any) -> int | None:
        """The seed whose folder holds ``path``; None elsewhere (ddp_spawn's hand-over file)."""
        resolved = Path(path).resolve()
        for index, run_dir in enumerate(self.run_dirs):
            if run_dir in resolved.parents:
                return index
        return None

    def encode(self, checkpoint: dict[str, Any], path: Path) -> memoryview:
        index = self._index(path)
        if index is None:
            return super().encode(checkpoint, path)
        one = dict(checkpoint)
        one["state_dict"] = split_state(checkpoint["state_dict"], index)
        split = [
            split_optimizer_state(s, index, self.shapes)
            for s in checkpoint.get("optimizer_states", [])
        ]
        one["optimizer_states"] = [state for state, _ in split]
        one[FUSED_KEY] = {
            "index": index,
            "seeds": len(self.run_dirs),
            "sliced": [sliced for _, sliced in split],
        }
        return super().encode(one, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        index = self._index(path)
        if index is None:
            return super().load_checkpoint(path, map_location, weights_only)
        relative = Path(path).resolve().relative_to(self.run_dirs[index])
        parts = [
            super(SeedCheckpointIO, self).load_checkpoint(
                d / relative, map_location, weights_only=False
            )
            for d in self.run_dirs
        ]
        merged = dict(parts[0])
        merged["state_dict"] = merge_states([p["state_dict"] for p in parts])
        sliced = parts[0][FUSED_KEY]["sliced"]
        merged["optimizer_states"] = [
            merge_optimizer_states([p["optimizer_states"][i] for p in parts], sliced[i])
            for i in range(len(sliced))
        ]
        merged.pop(FUSED_KEY)
        return merged


class SeedCheckpoints(Callback):
    """Each seed's ``last.ckpt`` every epoch and its ``best.ckpt`` when its metric improved.

    One state dump per epoch serves every seed (``SeedCheckpointIO`` slices it per
    folder), and a seed's new best is a copy of the ``last.ckpt`` just written: the same
    files ``ModelCheckpoint`` and ``LastCheckpoint`` write for a seed trained alone, at a
    fraction of the cost of 2 x S callbacks dumping and pickling the state each.
    "Improved" is ``ModelCheckpoint``'s rule: strictly better, and never a NaN or inf.
    """

    def __init__(
        self,
        states: SeedStates,
        run_dirs: Sequence[Path],
        monitor: str,
        mode: str,
        save_best: bool,
        save_last: bool,
    ):
        self.states, self.run_dirs, self.monitor, self.mode = (
            states,
            [Path(d) for d in run_dirs],
            monitor,
            mode,
        )
        self.save_best, self.save_last = save_best, save_last
        self.best: dict[int, float] = {}

    def _improved(self, trainer: pl.Trainer) -> list[int]:
        improved = []
        for seed in self.states.seeds:
            value = trainer.callback_metrics.get(seed_metric(self.monitor, seed))
            if value is None or not self.states.training(seed, trainer.current_epoch):
                continue
            if improved_on(float(value), self.best.get(seed), self.mode):
                self.best[seed] = float(value)
                improved.append(seed)
        return improved

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        improved = self._improved(trainer) if self.save_best else []
        if not (self.save_last or improved):
            return
        # Lightning's own Trainer.save_checkpoint dumps the state anew for every file.
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        for seed, run_dir in zip(self.states.seeds, self.run_dirs):
            last, best = checkpoint_file(run_dir, LAST), checkpoint_file(run_dir, BEST)
            if self.save_last:
                trainer.strategy.save_checkpoint(checkpoint, last)
            if seed in improved:
                if self.save_last and trainer.is_global_zero:  # queued behind last's write
                    trainer.strategy.checkpoint_io.copy_when_written(last, best)
                elif not self.save_last:
                    trainer.strategy.save_checkpoint(checkpoint, best)
        trainer.strategy.barrier("SeedCheckpoints")

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))


def resume_groups(
    seeds: Sequence[int], paths: Sequence[Path]
) -> tuple[list[list[int]], dict[int, str]]:
    """How the seeds of a fused run continue from their ``last.ckpt`` files (``paths``):
    groups of seeds whose checkpoints are at one step (each group resumes together, from its
    own step), and for every other seed why it starts over.

    A kill between the seeds' writes at the end of an epoch leaves some seeds one epoch
    ahead of the others: both groups still continue from their own checkpoints.
    """
    steps: dict[int, list[int]] = {}
    over: dict[int, str] = {}
    for seed, path in zip(seeds, paths):
        if not path.exists():
            over[seed] = f"it has no {path.parent.name}/{path.name}"
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: start over
            over[seed] = f"its {path.name} does not load ({exc.__class__.__name__})"
            continue
        if FUSED_KEY not in ckpt:
            over[seed] = f"its {path.name} was not written by fused seeds"
            continue
        steps.setdefault(ckpt.get("global_step"), []).append(seed)
    return [steps[step] for step in sorted(steps, reverse=True)], over
