"""The results validator (``aavs check-results``): every file of a results folder that a reader reads,
read through its record, before trusting a folder someone else wrote.

It checks what the readers (the leaderboard, the report, ``aavs predict --experiment``) would refuse
one by one: a newer format version, a link out of the folder or a file that is not a file
(:func:`~aavs.orchestrator.results.containment.check_tree`), a file that is not its record, and a path
recorded in ``best.json`` whose copy in the folder would lie outside it. A torn or missing file is not a
problem (a running or killed writer leaves them; the readers take them as absent). The first problem is
an InputError naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from aavs.datasets.errors import InputError
from aavs.orchestrator.results.containment import CHECKPOINT_DEPTH, MASKS_DEPTH, check_tree, own_copy
from aavs.orchestrator.results.experiment_files import Leaderboard, read_run, read_stop, require_spec
from aavs.orchestrator.results.names import (
    BEST,
    BEST_FILE,
    LEADERBOARD_FILE,
    MASKS_DIR,
    REPORT_DIR,
)
from aavs.orchestrator.results.predictions import read_predictions, stage_test_dir
from aavs.orchestrator.results.records import read_record
from aavs.orchestrator.results.stage_files import read_best, read_done, read_inputs, read_masks_success
from aavs.orchestrator.results.trial_files import (
    read_checkpoint_metrics,
    read_metrics,
    read_node,
    read_params,
    read_schedule,
    read_status,
    read_trial_config,
)
from aavs.orchestrator.results.versioning import check_format, read_provenance


def check_folder(results_dir: str | os.PathLike[str]) -> int:
    """Check ``results_dir`` (see the module docstring); returns how many trials it holds."""
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such results folder")
    check_format(root)
    check_tree(root)
    spec = require_spec(root)
    read_provenance(root)
    read_run(root)
    read_stop(root)
    read_record(root / LEADERBOARD_FILE, Leaderboard)
    trials = 0
    for stage in spec.stage_names:
        stage_dir = root / stage
        read_inputs(stage_dir)
        read_done(stage_dir)
        read_masks_success(stage_dir / MASKS_DIR)
        read_predictions(stage_test_dir(stage_dir))
        read_predictions(root / REPORT_DIR / stage)
        best = read_best(stage_dir)
        if best is not None:
            own_copy(root, best.checkpoint, CHECKPOINT_DEPTH, stage_dir / BEST_FILE)
            own_copy(root, best.masks, MASKS_DEPTH, stage_dir / BEST_FILE)
        for trial_dir in sorted(p for p in (stage_dir / "trials").glob("*") if p.is_dir()):
            read_params(trial_dir)
            read_schedule(trial_dir)
            read_trial_config(trial_dir)
            read_node(trial_dir)
            read_status(trial_dir)
            read_metrics(trial_dir)
            read_checkpoint_metrics(trial_dir / BEST)
            trials += 1
    return trials
