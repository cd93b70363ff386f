"""``aavs predict --ray``: the per-window steps as a Ray Data pipeline.

Decode and audio embedding run as CPU tasks, prediction in an actor pool (each actor loads the
networks once), mask writing as CPU tasks as windows come; per video, the overlay and timeline are a
task once its last window is written. Ray pickles :class:`_PredictStep`, :func:`_finish_remote`, :func:`_embed_remote` and
:func:`_worker_embedder` by reference, so they stay module-level here.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

from aavs.datasets.atomic import atomic_dir
from aavs.datasets.errors import InputError
from aavs.datasets.video import WindowEmbedder
from aavs.orchestrator.predict.jobs import Outcome, ProgressView, VideoJob, failed
from aavs.orchestrator.predict.models import Models, ModelSource
from aavs.orchestrator.predict.outputs import finish_video
from aavs.orchestrator.predict.steps import decode_rows, embed_row, predict_row, write_row
from aavs.orchestrator.ray_local import local_ray_kwargs
from aavs.orchestrator.recipe.threads import cpu_threads


@functools.lru_cache(maxsize=2)
def _worker_embedder(source: ModelSource) -> WindowEmbedder:
    """One embedder per worker process: Ray reuses workers across tasks, so VGGish loads once each."""
    return WindowEmbedder(source.vggish, source.vggish_pca, source.cache_dir)


def _embed_remote(row: dict[str, Any], source: ModelSource, threads: int) -> dict[str, Any]:
    """Ray task: a window's audio embeddings, computed with the driver's torch thread count.

    A Ray worker's own count comes from the ``num_cpus`` of the first task it ran, not from the
    driver's; a different count splits float reductions differently, and on some CPUs that moves a
    pixel across a class boundary, so the pipeline would write other masks than ``run_local``."""
    with cpu_threads(threads):
        return embed_row(row, _worker_embedder(source))


class _PredictStep:
    """Ray Data actor: the networks, loaded once per actor."""

    def __init__(self, source: ModelSource, threads: int) -> None:
        self.models, self.threads = Models(source), threads

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        with cpu_threads(self.threads):  # the driver's count, as in _embed_remote
            return predict_row(row, self.models)


def _finish_remote(
    job: VideoJob, folder: str, class_names: tuple[str, ...], binary: bool, models: dict[str, Any]
) -> dict[str, float] | str:
    """Ray task: a video's overlay and timeline; an error message instead of raising (bad input)."""
    try:
        return finish_video(job, Path(folder), class_names, binary, models)
    except InputError as err:
        return str(err)


def run_ray(
    jobs: list[VideoJob], out: Path, source: ModelSource, view: ProgressView, actors: int = 1, gpus_per_actor: float = 0
) -> list[Outcome]:
    """The same steps as :func:`aavs.orchestrator.predict.run.run_local`, as a Ray Data pipeline.
    Folders of failed videos are dropped after the pipeline has drained."""
    import ray  # heavy: only `--ray` needs it
    import torch

    threads = torch.get_num_threads()  # what run_local would compute with: the workers use the same

    if not ray.is_initialized():
        ray.init(**local_ray_kwargs())  # on 127.0.0.1 only, unless RAY_ADDRESS names a cluster
    ray.data.DataContext.get_current().enable_progress_bars = False
    probe_models = Models(source, device="cpu")  # names, size and checks, here, before any worker starts
    finish = ray.remote(_finish_remote)
    with contextlib.ExitStack() as cleanup:
        folders = {job.name: _open_folder(cleanup, out / job.name) for job in jobs}
        by_name = {job.name: job for job in jobs}
        items = [{"path": str(j.path), "name": j.name, "folder": str(folders[j.name][1])} for j in jobs]
        size = probe_models.image_size
        ds = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .flat_map(lambda video: decode_rows(video, size))
            .map(lambda row: _embed_remote(row, source, threads))
            # Ray's annotation of map() names functions only; a callable class makes it an actor pool.
            .map(
                _PredictStep,  # type: ignore[arg-type]
                fn_constructor_kwargs={"source": source, "threads": threads},
                concurrency=actors,
                num_gpus=gpus_per_actor,
            )
            .map(write_row)
        )
        errors: dict[str, str] = {}
        seconds: dict[str, int] = dict.fromkeys(by_name, 0)
        for row in ds.iter_rows():
            name = row["name"]
            if row["error"]:
                errors.setdefault(name, row["error"])
                continue
            n = by_name[name].add(row)
            seconds[name] += n
            view.second(n)
        pending = {
            name: finish.remote(
                job, str(folders[name][1]), probe_models.class_names, probe_models.binary, probe_models.describe()
            )
            for name, job in by_name.items()
            if name not in errors
        }
        outcomes = []
        for name, job in by_name.items():
            result = ray.get(pending[name]) if name in pending else errors[name]
            stack = folders[name][0]
            if isinstance(result, dict):
                job.timings.update(result)
                stack.close()  # renames the folder into place
                outcomes.append(Outcome(job, "done", seconds=seconds[name]))
            else:
                error = InputError(result)
                stack.__exit__(InputError, error, None)  # drops the temporary folder
                outcomes.append(failed(job, result))
            view.video()
    return outcomes


def _open_folder(cleanup: contextlib.ExitStack, final: Path) -> tuple[contextlib.ExitStack, Path]:
    """A video's temporary folder (``atomic_dir``), committed by closing its own stack; the outer
    ``cleanup`` drops any left open (an interrupted run)."""
    stack = contextlib.ExitStack()
    folder = stack.enter_context(atomic_dir(final))
    cleanup.callback(lambda: stack.__exit__(RuntimeError, RuntimeError("interrupted"), None))
    return stack, folder
