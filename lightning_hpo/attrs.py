"""The names of what this tool stores on studies and trials, in one place.

User attributes are what optuna-dashboard shows; system attributes are bookkeeping.
"""

from __future__ import annotations

# Trial user attributes.
FAIL_REASON = "fail_reason"  # why a FAIL trial failed, in words (every FAIL has one)
RETRY_OF = "retry_of"  # the number of the trial a retry runs again
# How a retry started: {"of", "continued_at_epoch"} (and "seeds": where each of the seeds
# trained one after another continued) or {"of", "started_over"}.
RETRY_ATTR = "retry"
GROUP_NAME = "group_name"  # the trial's folder name, <group>[<trial>]
RUN_DIR = "run_dir"  # where its seeds' runs are, on the machine that ran it
EPOCHS_ATTR = "epochs"  # epochs a full run trains (PFL's default target epoch)
N_SEEDS_ATTR = "n_seeds"  # seeds each epoch trains
SEEDS_ATTR = "seeds"  # those seeds, in the run's order (its data is built from the first)
PFL_ATTR = "pfl"  # PFL's latest decision and every prediction (pruner.decision_record)
LR_SCHEDULE_ATTR = "lr_schedule"  # {"name": scheduler path or None, "T_max": int}, for PFL
SLURM_JOB_ATTR = "slurm_job_id"  # the SLURM job that ran it (<array>_<task> for a job array)
DEVICES_ATTR = "devices"  # what it trained on: accelerator, devices, gpus (CUDA_VISIBLE_DEVICES)
CURVE_ATTR = (
    "curve"  # what its intermediate values are: "mean of 3 seeds", "first of 3 seeds", "one seed"
)

# Trial system attributes.
INTERRUPTED = "lightning_hpo:interrupted"  # stopped by Ctrl-C / SIGTERM: not counted, rerun
SURPLUS = "lightning_hpo:surplus"  # started after other workers had filled the study: not counted, never run
STALE = "lightning_hpo:stale"  # its worker died: not counted, retried
HOST, PID = "lightning_hpo:host", "lightning_hpo:pid"  # the worker running it
STARTED = "lightning_hpo:started"  # when that worker's process started: a recycled PID is not it
BEAT = "lightning_hpo:beat"  # the time of the worker's last heartbeat (tuning.liveness.Heartbeat)
RETRIED_FROM = "failed_trial"  # Optuna's own name for a retry's original trial

# Study system attributes.
STUDY_UID = "lightning_hpo:uid"  # a random id, also written into the study's run folder

# Study user attributes.
PROVENANCE = "provenance"  # versions, git commit, host, device, command of the study's creator
PRUNER_ATTR = "pruner"  # {"name", "kwargs"}: the optimize config's pruner, as its latest run set it
