"""The results folder's names: its format version and the name of every file and folder in it (the
layout is drawn in :mod:`aavs.orchestrator.results`). Each name is stated here once; writers and
readers, and the modules that import torch (checkpointing, output capture), take it from here."""

from __future__ import annotations

# The layout this package writes; every earlier one is still read.
#   1  the first versioned layout
#   2  trials are named by the stage's searcher as it proposes them (params.json written when a trial
#      starts, Tune's experiment state under <stage>/tune/); best.json gains repeats and the
#      configuration's mean and std. A version-1 stage's inputs differ from version 2's (the stage's
#      search settings are new keys), so `aavs resume` re-runs it and keeps the old one superseded.
FORMAT_VERSION = 2

# Experiment files (under results/<name>/).
FORMAT_FILE = "format.json"
PROVENANCE_FILE = "provenance.json"
SPEC_FILE = "spec.json"
RUN_FILE = "run.json"
STOP_FILE = "stop.json"
LEADERBOARD_FILE = "leaderboard.json"
SPEC_YAML = "spec.yaml"  # the resolved experiment as YAML, beside spec.json (aavs resume reads it)
DATA_DIR = "data"  # the synthetic data set, when the spec asks for one
BASE_DIR = "base"  # model.pretrain's pre-trained base
CACHE_DIR = "cache"  # audio embeddings, computed once for all trials and nodes
REPORT_DIR = "report"  # report/<stage>/: the report's pictures (aavs.orchestrator.views.figures)

# Stage files (under <stage>/).
INPUTS_FILE = "inputs.json"
BEST_FILE = "best.json"
DONE_FILE = "done.json"
MASKS_DIR = "masks"  # <stage>/masks/: the best checkpoint's masks of every split (a later stage's prior)
MASKS_SUCCESS_FILE = "_SUCCESS.json"  # in <stage>/masks/
TEST_DIR = "test"  # <stage>/test/: what the stage's test evaluation leaves for the report
SAMPLES_FILE = "samples.npz"  # in <stage>/test/, beside its predictions.json

# Trial files (under <stage>/trials/<id>/).
PARAMS_FILE = "params.json"
SCHEDULE_FILE = "schedule.json"
CONFIG_FILE = "config.json"
NODE_FILE = "node.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
TRIAL_LOG = "log.txt"  # the trial's output (aavs.orchestrator.recipe.output_capture); rank N > 0: log.rankN.txt
LAST = "checkpoints/last"  # the training state after the last finished epoch (recipe.checkpointing)
BEST = "best"  # the best checkpoint so far by the stage's metric
CHECKPOINT_METRICS_FILE = "metrics.json"  # in best/: the val metrics of the epoch it is from

# Report files: <stage>/test/predictions.json, and report/<stage>/predictions.json (what was drawn).
PREDICTIONS_FILE = "predictions.json"
