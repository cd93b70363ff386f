"""The results folder: one typed record, reader and writer per file, and the folder's format version.

A results folder is the contract between the driver (``aavs run``/``resume``), the trials (wherever
they run), the leaderboard and live view, the report, ``aavs predict`` and remote watchers. Every one of
them reads and writes it through this package, so its layout is stated once, here (the names in
:mod:`~aavs.orchestrator.results.names`)::

    file (under results/<name>/)          written by                      read by                          record
    format.json                           run/resume (open_results)       every reader (check_format)      FormatRecord
    provenance.json                       run/resume (open_results)       people (what wrote the folder)   ProvenanceLog
    spec.json                             run (the driver)                leaderboard, report, predict,    SpecRecord
                                                                           logs
    run.json                              run                             resume (started_mode)            RunRecord
    stop.json                             aavs stop, Ctrl-C               the driver, --local trials       StopRequest
    leaderboard.json                      the driver's live view          leaderboard, --watch, report     Leaderboard
    <stage>/inputs.json                   the driver, at a stage's start  the driver (supersede)           InputsRecord
    <stage>/best.json                     the driver, at a stage's end    driver, leaderboard, predict     BestTrial
    <stage>/done.json                     the driver, last of a stage     driver (skip), leaderboard, logs DoneRecord
    <stage>/masks/_SUCCESS.json           the mask export task            driver, leaderboard              MasksRecord
    <stage>/test/predictions.json         the test evaluation task        the report                       Predictions
    <stage>/test/samples.npz              the test evaluation task        the report                       SampleImages
    <stage>/trials/<id>/params.json       the trial, as it starts         driver, leaderboard              dict (the search space's keys)
    <stage>/tune/                         Ray Tune (experiment state)     aavs resume (Tuner.restore)      Tune's own
    <stage>/trials/<id>/schedule.json     the trial, when PBT exploits    leaderboard                      Schedule
    <stage>/trials/<id>/config.json       train_func                      leaderboard                      dict (TrainConfig.to_dict())
    <stage>/trials/<id>/node.json         the trial (rank 0, Ray; ranks   people, tests                    NodeRecord
                                          N > 0: node.rankN.json), the
                                          Ray runner (the end of a trial
                                          Tune ended)
    <stage>/trials/<id>/status.json       train_func, output_capture,     driver, leaderboard, logs        StatusRecord
                                          the Ray runner (stopped)
    <stage>/trials/<id>/metrics.jsonl     train_func (one line a report)  leaderboard, train_func (resume) MetricsRow
    <stage>/trials/<id>/best/metrics.json train_func (_save_best)         driver and leaderboard (ranking) CheckpointMetrics
    <stage>/trials/<id>/log.txt           output_capture                  aavs logs, leaderboard           text
    report/<stage>/predictions.json       the report                      the report (is it current?)      Predictions

Checkpoint internals (``checkpoints/last/``, a checkpoint's ``aavs.json``) belong to
:mod:`aavs.orchestrator.recipe.checkpointing` and :mod:`aavs.models`, not to this package; only the
folder names ``LAST`` and ``BEST`` are stated here. A stage's trials are ranked by one rule,
:func:`~aavs.orchestrator.results.ranking.rank_trials`. A reader opens only what lies inside the
folder (:mod:`~aavs.orchestrator.results.containment`): no link out of it is followed.

Format version. ``format.json`` records the version of this layout the folder was written in
(:data:`FORMAT_VERSION`); a folder without it predates versioning and is version 1, whose files have
the layouts read here today. A folder of a newer version than this aavs knows is refused with an
:class:`InputError` that names the folder and both versions, by every reader (they all read
``spec.json`` first, through :func:`read_spec`) and before ``aavs run``/``resume`` write anything.
A change of any file's layout bumps :data:`FORMAT_VERSION` and keeps reading the previous layouts: a
search must survive an upgrade of aavs mid-run, so a folder a newer aavs resumed holds files of both.
The record of a changed file gets a ``model_validator(mode="before")`` that turns its older layout
into the new one (if the shapes are not told apart by their keys, the file gains a ``format_version``
key from then on), and tests/test_results.py keeps a hand-built folder of every earlier version.
Records keep keys they do not know (``extra="allow"``), so rewriting a file (a status update) never
drops what a newer writer of the same version added. A new file is not a layout change: its readers
take its absence (``<stage>/test/`` of an older folder: the report draws the curves only).
"""

from __future__ import annotations

from aavs.orchestrator.results.containment import CHECKPOINT_DEPTH, MASKS_DEPTH, check_tree, inside, own_copy
from aavs.orchestrator.results.experiment_files import (
    Leaderboard,
    Progress,
    RunRecord,
    SpecRecord,
    StopRequest,
    clear_stop,
    read_leaderboard,
    read_run,
    read_spec,
    read_stop,
    require_spec,
    results_path,
    write_leaderboard,
    write_run,
    write_spec,
    write_stop,
)
from aavs.orchestrator.results.folder_check import check_folder
from aavs.orchestrator.results.names import (
    BASE_DIR,
    BEST,
    BEST_FILE,
    CACHE_DIR,
    CHECKPOINT_METRICS_FILE,
    CONFIG_FILE,
    DATA_DIR,
    DONE_FILE,
    FORMAT_FILE,
    FORMAT_VERSION,
    INPUTS_FILE,
    LAST,
    LEADERBOARD_FILE,
    MASKS_DIR,
    MASKS_SUCCESS_FILE,
    METRICS_FILE,
    NODE_FILE,
    PARAMS_FILE,
    PREDICTIONS_FILE,
    PROVENANCE_FILE,
    REPORT_DIR,
    RUN_FILE,
    SAMPLES_FILE,
    SCHEDULE_FILE,
    SPEC_FILE,
    SPEC_YAML,
    STATUS_FILE,
    STOP_FILE,
    TEST_DIR,
    TRIAL_LOG,
)
from aavs.orchestrator.results.predictions import (
    PerClass,
    Predictions,
    Sample,
    SampleImages,
    read_predictions,
    read_test_predictions,
    read_test_samples,
    stage_test_dir,
    write_predictions,
    write_test_predictions,
)
from aavs.orchestrator.results.ranking import RankedTrial, configuration_key, rank_trials, trial_dirs
from aavs.orchestrator.results.records import (
    OpenRecord,
    Record,
    StageStatus,
    StrEnum,
    TrialStatus,
    load_json,
    read_record,
    write_record,
)
from aavs.orchestrator.results.stage_files import (
    BestTrial,
    DoneRecord,
    InputsRecord,
    MasksRecord,
    folder_files,
    read_best,
    read_done,
    read_inputs,
    read_masks_success,
    write_best,
    write_done,
    write_inputs,
    write_masks_success,
)
from aavs.orchestrator.results.stage_plan import DISTRIBUTIONS, fixed, is_distribution, planned_trials, searched
from aavs.orchestrator.results.trial_files import (
    CheckpointMetrics,
    MetricsRow,
    NodeRecord,
    Schedule,
    ScheduleEntry,
    StatusRecord,
    append_metrics,
    clear_metrics,
    end_node,
    keep_metrics_through,
    metrics_line,
    progress_line,
    read_checkpoint_metrics,
    read_metrics,
    read_node,
    read_params,
    read_schedule,
    read_status,
    read_trial_config,
    trial_status,
    write_checkpoint_metrics,
    write_metrics,
    write_node,
    write_params,
    write_schedule,
    write_status,
    write_trial_config,
)
from aavs.orchestrator.results.versioning import (
    PROVENANCE_PACKAGES,
    FormatRecord,
    Provenance,
    ProvenanceLog,
    aavs_version,
    check_format,
    folder_version,
    open_results,
    provenance,
    read_provenance,
)

__all__ = [
    "BASE_DIR",
    "BEST",
    "BEST_FILE",
    "CACHE_DIR",
    "CHECKPOINT_DEPTH",
    "CHECKPOINT_METRICS_FILE",
    "CONFIG_FILE",
    "DATA_DIR",
    "DISTRIBUTIONS",
    "DONE_FILE",
    "FORMAT_FILE",
    "FORMAT_VERSION",
    "INPUTS_FILE",
    "LAST",
    "LEADERBOARD_FILE",
    "MASKS_DEPTH",
    "MASKS_DIR",
    "MASKS_SUCCESS_FILE",
    "METRICS_FILE",
    "NODE_FILE",
    "PARAMS_FILE",
    "PREDICTIONS_FILE",
    "PROVENANCE_FILE",
    "PROVENANCE_PACKAGES",
    "REPORT_DIR",
    "RUN_FILE",
    "SAMPLES_FILE",
    "SCHEDULE_FILE",
    "SPEC_FILE",
    "SPEC_YAML",
    "STATUS_FILE",
    "STOP_FILE",
    "TEST_DIR",
    "TRIAL_LOG",
    "BestTrial",
    "CheckpointMetrics",
    "DoneRecord",
    "FormatRecord",
    "InputsRecord",
    "Leaderboard",
    "MasksRecord",
    "MetricsRow",
    "NodeRecord",
    "OpenRecord",
    "PerClass",
    "Predictions",
    "Progress",
    "Provenance",
    "ProvenanceLog",
    "RankedTrial",
    "Record",
    "RunRecord",
    "Sample",
    "SampleImages",
    "Schedule",
    "ScheduleEntry",
    "SpecRecord",
    "StageStatus",
    "StatusRecord",
    "StopRequest",
    "StrEnum",
    "TrialStatus",
    "aavs_version",
    "append_metrics",
    "check_folder",
    "check_format",
    "check_tree",
    "clear_metrics",
    "clear_stop",
    "configuration_key",
    "end_node",
    "fixed",
    "folder_files",
    "folder_version",
    "inside",
    "is_distribution",
    "keep_metrics_through",
    "load_json",
    "metrics_line",
    "open_results",
    "own_copy",
    "planned_trials",
    "provenance",
    "rank_trials",
    "read_best",
    "read_checkpoint_metrics",
    "read_done",
    "read_inputs",
    "read_leaderboard",
    "read_masks_success",
    "read_metrics",
    "read_node",
    "read_params",
    "read_predictions",
    "read_provenance",
    "read_record",
    "read_run",
    "read_schedule",
    "read_spec",
    "progress_line",
    "read_status",
    "read_stop",
    "read_test_predictions",
    "read_test_samples",
    "read_trial_config",
    "require_spec",
    "results_path",
    "searched",
    "stage_test_dir",
    "trial_dirs",
    "trial_status",
    "write_best",
    "write_checkpoint_metrics",
    "write_done",
    "write_inputs",
    "write_leaderboard",
    "write_masks_success",
    "write_metrics",
    "write_node",
    "write_params",
    "write_predictions",
    "write_record",
    "write_run",
    "write_schedule",
    "write_spec",
    "write_status",
    "write_stop",
    "write_test_predictions",
    "write_trial_config",
]
