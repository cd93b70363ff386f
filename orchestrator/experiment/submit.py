"""``aavs submit``: run an experiment on a Ray cluster through Ray's job submission API.

The job runs ``python -m aavs.orchestrator.cli run EXPERIMENT`` on the cluster's head node, in a
copy of the working directory (the experiment file must lie inside it; big folders are not
uploaded). Three things make the job behave like ``aavs run`` started here:

- the aavs code that runs this command travels with the job (Ray ``py_modules``), so every node
  runs it, whatever aavs version its Python has (or has none: the cluster needs the dependencies);
- relative paths in the experiment (``data.root``, ``model.pretrained``, VGGish files) and
  ``--results`` are made absolute here, as ``aavs run`` would resolve them from this directory: on
  a cluster they must name shared storage mounted at the same path on every node;
- a token for Ray's token authentication comes from ``RAY_AUTH_TOKEN`` in the environment (never
  from a file in the uploaded folder), or from Ray's own lookup when ``RAY_AUTH_MODE=token``.

A job API on another host is only used with a token (or ``--insecure``): a cluster that takes jobs
without one runs the code of anyone who reaches its port. The token is sent in a header only; it is
never logged, put into the job or written to the results folder.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import yaml

from aavs.datasets.errors import InputError
from aavs.orchestrator.experiment.spec import load_spec
from aavs.orchestrator.results import results_path

if TYPE_CHECKING:
    from ray.job_submission import JobStatus, JobSubmissionClient

log = logging.getLogger(__name__)

# Never uploaded with the working directory: environments, data, weights, results, build output.
EXCLUDES = [
    "/.venv",
    "/venv",
    "/results",
    "/data",
    "/weights",
    "/build",
    ".git",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    "*.safetensors",
    "*.pth",
    "*.pt",
    "*.ckpt",
]
PACKAGES = ("orchestrator", "models", "datasets")  # the sub-packages of the aavs namespace (pyproject.toml)
PATH_KEYS = (("data", "root"), ("model", "pretrained"), ("model", "vggish"), ("model", "vggish_pca"))


@dataclass
class Submission:
    """What ``submit`` sends: the entrypoint command, its runtime_env, and where results will be."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    results_dir: Path  # <results>/<experiment name>, as the job writes it


def prepare_submission(
    experiment: str | Path,
    overrides: list[str] | None = None,
    results: str = "results",
    working_dir: str | Path = ".",
    runtime_env_file: str | Path | None = None,
) -> Submission:
    """Validate the experiment here (bad input fails before anything is sent) and build the job."""
    experiment, work = Path(experiment), Path(working_dir).expanduser().resolve()
    if not work.is_dir():
        raise InputError(f"--working-dir {working_dir}: not a directory")
    spec, raw = load_spec(experiment, overrides)
    try:
        relative = experiment.resolve().relative_to(work)
    except ValueError:
        raise InputError(
            f"{experiment}: outside the working directory {work} that is uploaded with the job; "
            "run aavs submit from a folder that contains it, or pass --working-dir"
        ) from None
    root = results_path(results)
    overrides = list(overrides or [])
    for section, key in PATH_KEYS:  # as `aavs run` here would resolve them
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            overrides.append(f"{section}.{key}={json.dumps(str(Path(value).expanduser().resolve()))}")
    argv = ["python", "-m", "aavs.orchestrator.cli", "run", relative.as_posix(), "--results", str(root)]
    for item in overrides:
        argv += ["--set", item]

    runtime_env = _read_runtime_env(runtime_env_file) if runtime_env_file else {}
    excludes = list(runtime_env.get("excludes") or []) + EXCLUDES
    try:  # results written inside the working directory are never uploaded back
        excludes.append("/" + root.relative_to(work).as_posix())
    except ValueError:
        pass
    runtime_env.update(working_dir=str(work), excludes=excludes)
    _refuse_token_file_inside(work)
    return Submission(
        entrypoint=shlex.join(argv),
        runtime_env=runtime_env,
        metadata={"aavs_experiment": spec.name, "aavs_results": str(root / spec.name)},
        results_dir=root / spec.name,
    )


def _read_runtime_env(path: str | Path) -> dict[str, Any]:
    try:
        env = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--runtime-env {path}: no such file") from None
    except yaml.YAMLError as err:
        raise InputError(f"--runtime-env {path}: not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(env, dict):
        raise InputError(f"{path}: expected a mapping (a Ray runtime_env), got {env!r}")
    return env


def _refuse_token_file_inside(work: Path) -> None:
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token_path and Path(token_path).expanduser().resolve().is_relative_to(work):
        raise InputError(
            f"RAY_AUTH_TOKEN_PATH={token_path}: the token file lies inside the working directory "
            f"{work}, which is uploaded with the job; keep it outside (e.g. ~/.ray/auth_token) "
            "or pass the token in RAY_AUTH_TOKEN"
        )


def auth_headers() -> dict[str, str]:
    """``Authorization`` for a cluster with token authentication, from ``RAY_AUTH_TOKEN``.

    Without it, Ray's client adds the header itself when ``RAY_AUTH_MODE=token`` (the token then comes
    from ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``).
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_loopback(address: str) -> bool:
    """Whether the URL's host is this machine's loopback (``localhost``, 127.0.0.0/8, ``::1``). Other
    names are not resolved (what a name points to can change), so they count as other hosts."""
    host = urlparse(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_authenticated(address: str, insecure: bool) -> None:
    """Refuse a job API off this machine without a token, unless ``insecure`` says so on purpose."""
    if is_loopback(address) or insecure or auth_headers() or os.environ.get("RAY_AUTH_MODE") == "token":
        return
    raise InputError(
        f"--address {address}: not this machine, and no token is set: a job API that takes jobs "
        "without a token runs anyone's code; set RAY_AUTH_TOKEN to the cluster's token (or "
        "RAY_AUTH_MODE=token with the token in ~/.ray/auth_token), or pass --insecure if that cluster "
        "is reachable only by you"
    )


def connect(address: str, insecure: bool = False) -> JobSubmissionClient:
    """A ``JobSubmissionClient`` for ``address``; an unreachable or refusing cluster is bad input, and so
    is a cluster on another host without a token (unless ``insecure``)."""
    # here, not at the top: Ray's client is imported only by the command that uses it
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):
        raise InputError(f"--address {address}: expected the job API's URL, e.g. http://127.0.0.1:8265")
    check_authenticated(address, insecure)
    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except ConnectionError as err:
        raise InputError(f"--address {address}: no Ray job API answers there ({err})") from None
    except AuthenticationError as err:
        raise InputError(
            f"--address {address}: the cluster refused the token; set RAY_AUTH_TOKEN to the "
            f"cluster's token ({str(err).splitlines()[0]})"
        ) from None


def submit(client: JobSubmissionClient, submission: Submission) -> str:
    """Submit the job, with this installation's aavs packages as its ``py_modules``; returns the job id."""
    with tempfile.TemporaryDirectory(prefix="aavs-submit-") as staging:
        package = Path(staging) / "aavs"
        for name in PACKAGES:
            found = find_spec(f"aavs.{name}")
            assert found is not None and found.submodule_search_locations, f"aavs.{name} is installed"
            source = found.submodule_search_locations[0]
            shutil.copytree(source, package / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        runtime_env = dict(submission.runtime_env)
        runtime_env["py_modules"] = list(runtime_env.get("py_modules") or []) + [str(package)]
        log.info("submitting %s (results: %s)", submission.entrypoint, submission.results_dir)
        return client.submit_job(
            entrypoint=submission.entrypoint, runtime_env=runtime_env, metadata=submission.metadata
        )


def follow(client: JobSubmissionClient, job_id: str, write: Callable[[str], Any], poll_s: float = 1.0) -> JobStatus:
    """Stream the job's logs through ``write`` until it ends; returns its final ``JobStatus``."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    try:
        asyncio.run(tail())
    except RuntimeError as err:  # the log stream broke off: the status still decides the outcome
        log.warning("job %s: log stream ended early (%s); waiting for the job to finish", job_id, err)
    while not (status := client.get_job_status(job_id)).is_terminal():
        time.sleep(poll_s)
    return status
