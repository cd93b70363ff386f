"""Experiment commands: ``aavs run``, ``aavs estimate``, ``aavs schema``, ``aavs resume``, ``aavs stop`` and
``aavs submit``.

Each ``cmd_*`` imports the module it drives in its body (as in every module of the CLI), so that
``aavs --help`` does not import Ray, torch or the experiment driver.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aavs.orchestrator.cli.common import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    add_force,
    add_json,
    add_results,
    add_set,
    console,
    emit,
    write_through,
)

if TYPE_CHECKING:
    from rich.console import Console

    from aavs.orchestrator.cli.common import Subparsers

log = logging.getLogger("aavs")

DEFAULT_JOB_API = "http://127.0.0.1:8265"  # the dashboard's job API on a head started as cluster/README.md says


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    if args.print_config:
        return _print_config(args)
    from aavs.orchestrator.experiment.driver import run_experiment

    with _run_console() as out:
        results = run_experiment(
            args.experiment,
            overrides=args.set,
            results_root=args.results,
            local=args.local,
            console=out,
            verbose=args.verbose,
            force=args.force,
        )
        _show_results(out, results)
    return EXIT_OK


def _dry_run(args: argparse.Namespace) -> int:
    """``aavs run --dry-run``: every problem ``aavs run`` would refuse before its first trial (the file,
    its data root, what the mode needs), one a line on stderr; exit status 2 if there is any. No results
    folder is made. A runnable file is ``valid``, followed on a terminal (or with ``--estimate``) by
    ``aavs estimate``'s sheet for the experiment's own devices; an experiment too large to estimate
    says why there and stays valid."""
    from aavs.datasets.errors import InputError
    from aavs.orchestrator.experiment.preparation import experiment_problems

    problems = experiment_problems(args.experiment, args.set, local=args.local, results_root=args.results)
    for line in problems:
        sys.stderr.write(f"aavs: error: {line}\n")
    if problems:
        return EXIT_INPUT
    sys.stdout.write(f"{args.experiment}: valid\n")
    if args.estimate or sys.stdout.isatty():
        sys.stdout.flush()
        try:
            _estimate(args, gpu=None, cpu=None, gpus=None, mfu=None, peak=None, shape=None, loader_fps=None)
        except InputError as err:
            sys.stdout.write(f"no estimate: {err}\n")
    return EXIT_OK


def cmd_estimate(args: argparse.Namespace) -> int:
    """``aavs estimate``: the sheet (:mod:`aavs.orchestrator.estimate.sheet`), a table or ``--json``."""
    from aavs.datasets.errors import InputError

    if args.device not in (None, "cpu"):
        raise InputError(f"--device {args.device}: expected cpu (or --gpu NAME for a GPU)")
    _estimate(
        args,
        gpu=args.gpu,
        cpu=args.device == "cpu" or None,
        gpus=args.gpus,
        mfu=args.mfu,
        peak=args.peak_tflops,
        shape=args.shape,
        loader_fps=args.loader_fps,
    )
    return EXIT_OK


def _estimate(
    args: argparse.Namespace,
    gpu: str | None,
    cpu: bool | None,
    gpus: float | None,
    mfu: float | None,
    peak: float | None,
    shape: str | None,
    loader_fps: float | None,
) -> None:
    """The sheet of ``args.experiment`` on the devices given, or (none given) on the experiment's own:
    GPUs (h100) when its workers take GPUs, else this machine's CPU."""
    from aavs.datasets.errors import InputError
    from aavs.orchestrator.estimate import devices
    from aavs.orchestrator.estimate import sheet as estimate
    from aavs.orchestrator.estimate.view import render_estimate
    from aavs.orchestrator.experiment.spec import load_spec

    spec, _ = load_spec(args.experiment, args.set)
    if cpu is None:
        cpu = gpu is None and spec.compute.gpus_per_worker == 0
    if loader_fps is not None and not loader_fps > 0:
        raise InputError(f"--loader-fps {loader_fps:g}: expected a positive number of frames per second")
    device = devices.resolve_device(gpu, cpu, gpus, mfu, spec.compute.mixed_precision, peak)
    options = estimate.Options(
        device=device,
        shape=shape,
        local=args.local,
        results_root=args.results,
        loader_fps=loader_fps or devices.LOADER_FRAMES_PER_S_PER_WORKER,
    )
    sheet = estimate.estimate(spec, options, source=str(args.experiment))
    emit(args, sheet, lambda out: render_estimate(out, sheet))


def _print_config(args: argparse.Namespace) -> int:
    """``aavs run --print-config``: every stage's training config, the method's defaults filled in."""
    import yaml

    from aavs.orchestrator.experiment.spec import load_spec
    from aavs.orchestrator.experiment.trial_config import effective_config

    spec, _ = load_spec(args.experiment, args.set)
    config = effective_config(spec, args.results)
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from aavs.orchestrator.experiment.spec import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    from aavs.orchestrator.experiment.driver import resume_experiment

    with _run_console() as out:
        results = resume_experiment(
            args.results_dir, local=args.local, console=out, verbose=args.verbose, force=args.force
        )
        _show_results(out, results)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    from aavs.orchestrator.experiment.stopping import request_stop
    from aavs.orchestrator.results import results_path

    sys.stdout.write(request_stop(results_path(args.results_dir)) + "\n")
    return EXIT_OK


@contextlib.contextmanager
def _run_console() -> Iterator[Console]:
    """The console of ``aavs run``/``resume``, on a duplicate of stdout's descriptor: a ``--local``
    trial points descriptors 1 and 2 at its log file, and the live view must stay on the terminal."""
    from rich.console import Console

    try:
        fd = os.dup(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a stdout without a descriptor (a test's capture)
        fd = None
    if fd is None:  # this object, not whatever sys.stdout is while a trial runs
        yield Console(file=sys.stdout)
        return
    with open(fd, "w", encoding="utf-8", buffering=1) as out:
        yield Console(file=out)


def _show_results(out: Console, results: Path) -> None:
    """The finished run's leaderboard, and where its trials' logs are."""
    from aavs.orchestrator.views.leaderboard import load_leaderboard, render_leaderboard
    from aavs.orchestrator.views.live import plain_line

    out.print(render_leaderboard(load_leaderboard(results)), soft_wrap=True)
    plain_line(out, f"trial logs: aavs logs {results} [STAGE/TRIAL]")


def cmd_submit(args: argparse.Namespace) -> int:
    """Exit status 0 once submitted (with --follow: when the job SUCCEEDED), 1 when it did not succeed."""
    from aavs.orchestrator.experiment import submit
    from aavs.orchestrator.results import LEADERBOARD_FILE

    job = submit.prepare_submission(
        args.experiment, args.set, results=args.results, working_dir=args.working_dir, runtime_env_file=args.runtime_env
    )
    client = submit.connect(args.address, insecure=args.insecure)
    job_id = submit.submit(client, job)
    write_through(job_id + "\n")
    if not args.follow:
        return EXIT_OK
    status = submit.follow(client, job_id, write_through)
    log.info("job %s: %s", job_id, status.value)
    if (job.results_dir / LEADERBOARD_FILE).is_file():
        from aavs.orchestrator.views.leaderboard import load_leaderboard, render_leaderboard

        console().print(render_leaderboard(load_leaderboard(job.results_dir)))
    else:
        log.warning(
            "%s is not visible from this machine: run `aavs leaderboard` where the cluster's storage is mounted",
            job.results_dir,
        )
    return EXIT_OK if status.value == "SUCCEEDED" else EXIT_INTERNAL


def register(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="run an experiment: every stage, Ray Tune trials, best checkpoint hand-over")
    p.add_argument("experiment")
    p.add_argument("--local", action="store_true", help="no Ray: trials one after another in this process")
    add_set(p)
    add_results(p)
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print every stage's training config with the method's defaults, and run nothing",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run every check `aavs run` makes before its first trial (the file, its data root, what the mode "
        "needs), run nothing (exit status 2 on any problem); writes only the data check's cache "
        "($AAVS_CACHE_DIR/data-check)",
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="with --dry-run: also print `aavs estimate`'s sheet when stdout is not a terminal (on one it is printed)",
    )
    add_force(p)
    p.set_defaults(func=cmd_run, json=False)

    p = sub.add_parser(
        "estimate",
        help="what an experiment will cost before it runs: frames, FLOPs, GPU-hours, wall time, checkpoints, "
        "loader workers, per stage",
    )
    p.add_argument("experiment")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gpu", default=None, help="h100, h200 or a100 (default: h100 when the workers take GPUs)")
    where.add_argument(
        "--device", default=None, help="cpu: this machine's CPU, its peak measured (default when the workers take none)"
    )
    p.add_argument(
        "--gpus",
        type=float,
        default=None,
        help="GPUs in the cluster (--device cpu: CPU cores; default 1 GPU, or this machine's cores)",
    )
    p.add_argument(
        "--mfu", type=float, default=None, help="model FLOP utilisation (default 0.4 on GPUs; measured on the CPU)"
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s of one device, instead of the table's")
    p.add_argument("--shape", default=None, help="avsbench: AVSBench's published video counts instead of the data root")
    p.add_argument(
        "--loader-fps",
        type=float,
        default=None,
        help="frames/s one DataLoader worker delivers at 384 (default 270: the frame store read from a slow disk, "
        "docs/scale.md)",
    )
    p.add_argument("--local", action="store_true", help="as `aavs run --local` runs it: one trial at a time, no Ray")
    add_set(p)
    add_results(p, "results root the run would use (where model.pretrain's base goes; default ./results)")
    add_json(p)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("schema", help="the experiment file's JSON Schema (every key, its type and default)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("resume", help="continue an interrupted experiment (in the mode it was started in)")
    p.add_argument("results_dir")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--local",
        dest="local",
        action="store_true",
        default=None,
        help="continue in this process, whatever the run was started with",
    )
    mode.add_argument("--ray", dest="local", action="store_false", help="continue on Ray")
    add_force(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("stop", help="ask a running experiment to stop (`aavs resume` continues it)")
    p.add_argument("results_dir")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("submit", help="run an experiment on a Ray cluster (Ray job submission)")
    p.add_argument("experiment", help="experiment file inside the working directory")
    p.add_argument("--address", default=DEFAULT_JOB_API, help=f"the cluster's job API (default: {DEFAULT_JOB_API})")
    p.add_argument("--follow", action="store_true", help="stream the job's logs, then show the leaderboard")
    add_set(p)
    add_results(p, "results root, a path every node sees (made absolute here; default: ./results)")
    p.add_argument("--working-dir", default=".", help="folder uploaded with the job (default: .)")
    p.add_argument("--runtime-env", default=None, help="a Ray runtime_env YAML to start from (pip, env_vars ...)")
    p.add_argument(
        "--insecure", action="store_true", help="submit to a job API on another host without a token (RAY_AUTH_TOKEN)"
    )
    p.set_defaults(func=cmd_submit)
