"""The commit protocol (aavs.datasets.atomic) killed at every step of a checkpoint commit and of a
stage's completion, and with a simulated power loss at each: a reader finds the old version or the
new one, also after the sweep that `aavs run`/`resume` makes, and `aavs resume` ends as the
uninterrupted run. The harness is tests/crash_consistency.py; its docstring says how it works.

The positions are split so that none is tried twice in `make test`: the instants where a version
moves (first, middle, right before and after each rename) in the fast tier, the rest marked slow.
`python tests/crash_consistency.py --all` runs every position of both sequences, the stage's first
completion too, and `aavs resume` after a kill at three positions of each (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_consistency import (
    KINDS,
    CheckpointCommit,
    Journal,
    Prepared,
    ResumedCheckpointCommit,
    ResumedStageCompletion,
    StageCompletion,
    after,
    before,
    best_values,
    ordering_problems,
    power_loss_states,
    prepare,
    record,
    representative,
    sweep_positions,
    try_position,
)

from aavs.datasets import atomic

# The number of positions of each sequence, as docs/reliability.md states them: a change of the
# protocol that changes them is a change to say there too.
POSITIONS = {"checkpoint commit": 43, "stage completion": 85}


@pytest.fixture(scope="module")
def checkpoint_commit(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepare(CheckpointCommit(), tmp_path_factory.mktemp("checkpoint-commit"))


@pytest.fixture(scope="module")
def stage_completion(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepare(StageCompletion(), tmp_path_factory.mktemp("stage-completion"))


@pytest.fixture(params=["checkpoint commit", "stage completion"])
def sequence(request: pytest.FixtureRequest) -> Prepared:
    fixture = request.param.replace(" ", "_")
    return request.getfixturevalue(fixture)


def kinds(journal: Journal) -> set[str]:
    return {call.kind for call in journal.calls}


def test_the_traces_have_every_kind_of_call_and_keep_the_ordering_rules(
    checkpoint_commit: Prepared, stage_completion: Prepared
) -> None:
    """Every kind of call the issue names is in the traces (accelerate's save_state counts as one
    write), the counts are the documented ones, and each rename publishes only fsynced content and
    is followed by its folder's fsync."""
    assert kinds(checkpoint_commit.journal) == set(KINDS) - {"append"}
    assert kinds(stage_completion.journal) == set(KINDS)
    calls = [str(c) for c in checkpoint_commit.journal.calls]
    assert calls[:2] == ["unlink trial/checkpoints/.state.epoch1.tmp", "write trial/checkpoints/.state.epoch1.tmp"]
    assert calls[-7:] == [
        "rename trial/checkpoints/.last.*.tmp -> trial/checkpoints/.last.new",
        "fsync trial/checkpoints",
        "rename trial/checkpoints/last -> trial/checkpoints/.last.old",
        "fsync trial/checkpoints",
        "rename trial/checkpoints/.last.new -> trial/checkpoints/last",
        "fsync trial/checkpoints",
        "unlink trial/checkpoints/.last.old",
    ]
    assert {p.sequence.name: p.positions for p in (checkpoint_commit, stage_completion)} == POSITIONS
    assert ordering_problems(checkpoint_commit.journal) == []
    assert ordering_problems(stage_completion.journal) == []


def rest(prepared: Prepared) -> list[int]:
    return sorted(set(range(prepared.positions)) - set(representative(prepared.journal)))


def test_old_or_new_where_a_version_moves(sequence: Prepared, tmp_path: Path) -> None:
    """Killed right before and right after each rename (and at the first and middle call), and a
    power loss at each of those instants: the old or the new version, before and after the sweep."""
    positions = representative(sequence.journal)
    outcomes = sweep_positions(sequence, tmp_path, positions)
    assert [o.position for o in outcomes] == positions
    assert {o.position: o.problems for o in outcomes if o.problems} == {}


@pytest.mark.slow
def test_old_or_new_at_every_other_position(sequence: Prepared, tmp_path: Path) -> None:
    """The remaining positions, killed and with a power loss (with the test above: all of them)."""
    outcomes = sweep_positions(sequence, tmp_path, rest(sequence))
    assert len(outcomes) + len(representative(sequence.journal)) == sequence.positions
    assert {o.position: o.problems for o in outcomes if o.problems} == {}


# ------------------------------------------------------------------------ the checks have teeth
@contextlib.contextmanager
def replace_in_place(path: str | Path) -> Iterator[Path]:
    """atomic_dir as the protocol was before issue 25: the old folder removed, then the new renamed
    in (a kill in between leaves neither), nothing fsynced."""
    path = Path(path)
    tmp = Path(atomic.tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    yield tmp
    atomic.FS.fill(tmp)
    if path.exists():
        atomic.FS.remove(path)
    atomic.FS.rename(tmp, path)


class NotAtomic(StageCompletion):
    """The stage's completion with ``replace_in_place`` for atomic_dir (in the child only)."""

    def commit(self, root: Path) -> None:
        atomic.atomic_dir = replace_in_place  # type: ignore[assignment]
        super().commit(root)


def test_a_commit_that_leaves_neither_version_is_found(tmp_path: Path) -> None:
    """The harness finds the instant the old protocol had no version of masks/, and that the sweep
    cannot bring one back."""
    prepared = prepare(NotAtomic(), tmp_path / "prepared")
    outcome = try_position(prepared, after("unlink", "stage/masks"), tmp_path, power=False)
    assert str(outcome.call) == "rename stage/.masks.*.tmp -> stage/masks"
    assert "killed: masks: neither the old nor the new version" in outcome.problems
    assert "killed, swept: masks: neither the old nor the new version" in outcome.problems


def test_missing_fsyncs_are_found_on_the_trace_and_by_the_power_loss(
    stage_completion: Prepared, tmp_path: Path
) -> None:
    """Without fsync the ordering rules fail on the trace, and a power loss right after best.json's
    rename can leave an empty best.json (renamed, its content never on the disk)."""
    root = tmp_path / "without-fsync"
    shutil.copytree(stage_completion.base, root)
    journal = record(lambda: stage_completion.sequence.commit(root), root, skip=("fsync",))
    problems = ordering_problems(journal)
    assert any("-> stage/best.json): stage/.best.json.*.tmp not fsynced since it was written" in p for p in problems)
    assert "the operation ended before stage/done.json's folder was fsynced after its rename" in problems
    outcome = try_position(
        stage_completion, after("rename", "stage/.best.json.*.tmp", "stage/best.json"), tmp_path, skip=("fsync",)
    )
    assert not any(p.startswith("killed") for p in outcome.problems)  # a kill alone does not need the fsyncs
    assert any("best: neither the old nor the new version" in p for p in outcome.problems), outcome.problems


def test_a_file_written_into_a_new_folder_survives_a_power_loss_after_the_write(tmp_path: Path) -> None:
    """Once `write_status` returned, the status counts as written: every power-loss state after it
    holds it, also when its trial folder was made for it."""
    from aavs.orchestrator import results

    (tmp_path / "stage" / "trials").mkdir(parents=True)
    trial = tmp_path / "stage" / "trials" / "t001"
    journal = record(lambda: results.write_status(trial, results.StatusRecord(status="running")), tmp_path)
    assert str(journal.calls[0]) == "mkdir stage/trials/t001"  # (the folder is made for the file)
    states = power_loss_states(journal, distinct=False)
    assert [label for label, tree in states if "stage/trials/t001/status.json" not in tree.entries] == []


# ------------------------------------------------------------------------------- aavs resume
def test_a_stage_completion_killed_with_its_masks_staged_resumes_to_the_runs_numbers(
    tiny_results: Path, tmp_path: Path
) -> None:
    """The first stage's completion killed right before `.masks.new` becomes `masks` (only the staged
    folder complete): `aavs resume` finishes it with the uninterrupted run's best.json values, the
    masks whole and no staging left. The other two positions: `crash_consistency.py --all`."""
    resumed = ResumedStageCompletion(tiny_results)
    assert resumed.resume_after_kill(resumed.positions()["masks staged"], tmp_path / "tiny") == []


def test_a_checkpoint_commit_killed_between_its_renames_resumes_to_the_runs_numbers(
    tiny_results: Path, tmp_path: Path
) -> None:
    """A last-stage trial trained again and killed in its last epoch's commit right after `last`
    moved aside (only `.last.new` and `.last.old` there): `aavs resume` ends with the uninterrupted
    run's best.json values and no staging left."""
    resumed = ResumedCheckpointCommit(tiny_results)
    journal, folder = resumed.resume_after_kill(resumed.positions()["old moved aside"], tmp_path / "tiny")
    assert str(journal.died_at) == "rename checkpoints/.last.new -> checkpoints/last"
    assert best_values(folder) == best_values(tiny_results)
    assert resumed.problems(folder) == []  # (also: no staging entry left)
    assert resumed.trial_differences(folder) == []  # its metrics.jsonl and status.json are the run's too


def test_positions_by_call_match_the_recorded_trace(checkpoint_commit: Prepared, tmp_path: Path) -> None:
    """`before`/`after` name the position the sweep numbers: the harness's two ways agree."""
    calls = [str(c) for c in checkpoint_commit.journal.calls]
    k = calls.index("rename trial/checkpoints/.last.new -> trial/checkpoints/last")
    by_call = try_position(
        checkpoint_commit,
        before("rename", "trial/checkpoints/.last.new", "trial/checkpoints/last"),
        tmp_path,
        power=False,
    )
    assert (by_call.position, by_call.problems) == (k, [])
