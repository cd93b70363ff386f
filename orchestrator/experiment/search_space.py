"""A stage's ``params`` as a search space: the syntax of each entry, which entries are searched, and which
searcher takes which space (the one table of searchers: :data:`SEARCHERS`).

Search-space syntax (each key a hyperparameter of the training run)::

    lr: 1.0e-3                          # a fixed value
    lr: {loguniform: [1.0e-4, 3.0e-3]}  # sampled log-uniformly
    adapter_warmup: {uniform: [0.3, 0.6]}
    batch_size: {choice: [1, 2]}        # sampled from the list
    weight_decay: {grid: [0.0, 0.05]}   # every value, times num_samples (as Ray Tune's grid_search)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar, Union, get_args

from pydantic import AfterValidator, Discriminator, Field, Tag
from pydantic.fields import FieldInfo
from typing_extensions import NotRequired, TypedDict

from aavs.orchestrator.recipe.config import STRICT, Expected, Hyperparameters

# Which params entries are searched: one rule, stated where the views (which read spec.json) find it too.
from aavs.orchestrator.results.stage_plan import fixed as fixed  # re-exported: trial_config and tests read it here
from aavs.orchestrator.results.stage_plan import searched

if TYPE_CHECKING:  # the stage's schema is built from this module's Params
    from aavs.orchestrator.experiment.spec import StageSpec

T = TypeVar("T")


def _interval(positive: bool) -> AfterValidator:
    def check(bounds: list[float]) -> list[float]:
        if len(bounds) != 2 or not bounds[0] < bounds[1] or (positive and bounds[0] <= 0):
            raise Expected("[low, high] with low < high" + (" and low > 0" if positive else ""))
        return bounds

    return AfterValidator(check)


class LogUniform(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    loguniform: Annotated[list[float], _interval(positive=True)]


class Uniform(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    uniform: Annotated[list[float], _interval(positive=False)]


class Choice(TypedDict, Generic[T]):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    choice: Annotated[list[T], Field(min_length=1)]


class Grid(TypedDict, Generic[T]):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    grid: Annotated[list[T], Field(min_length=1)]


def _searchable(field: FieldInfo) -> Any:
    """A fixed value of the field's type, a choice or grid of such values, or (for a real number) a
    uniform or log-uniform distribution."""
    annotated = (field.annotation, *field.metadata)
    value_type: Any = Annotated[annotated] if field.metadata else field.annotation
    kinds: dict[str, Any] = {"value": value_type, "choice": Choice[value_type], "grid": Grid[value_type]}
    if float in (field.annotation, *get_args(field.annotation)):
        kinds.update(loguniform=LogUniform, uniform=Uniform)

    def kind(value: Any) -> str | None:
        if not isinstance(value, Mapping):
            return "value"
        return next(iter(value)) if len(value) == 1 and next(iter(value)) in kinds else None

    return Annotated[
        Union[tuple(Annotated[t, Tag(k)] for k, t in kinds.items())],  # noqa: UP007 - a Union of run-time types
        Discriminator(
            kind,
            custom_error_type="search_space",
            custom_error_message=f"a value or one of {{{', '.join(k for k in kinds if k != 'value')}: ...}}",
        ),
    ]


# A stage's ``params``: the fields of Hyperparameters, each a value or a distribution over its values.
Params = TypedDict("Params", {name: NotRequired[_searchable(f)] for name, f in Hyperparameters.model_fields.items()})  # type: ignore[misc]
Params.__pydantic_config__ = STRICT  # type: ignore[attr-defined]


SearchName = Literal["random", "grid", "optuna", "hyperopt"]


@dataclass(frozen=True)
class Searcher:
    """What a stage's ``tune.search`` value means (built by aavs.orchestrator.experiment.search)."""

    help: str
    adaptive: bool = False  # proposes each trial from the results so far: no grid, needs a distribution
    enumerates: bool = False  # every combination of the listed values: no continuous distribution


SEARCHERS: dict[str, Searcher] = {
    "random": Searcher("Tune's variant generator, seeded: distributions sampled, grid entries enumerated"),
    "grid": Searcher("every combination of the choice and grid values", enumerates=True),
    "optuna": Searcher("Optuna's TPE: startup_trials random trials, then from the results so far", adaptive=True),
    "hyperopt": Searcher("HyperOpt's TPE, the same way", adaptive=True),
}
assert tuple(SEARCHERS) == get_args(SearchName), "one entry per searcher name"
CONTINUOUS = ("loguniform", "uniform")
TRIAL_INDEX = "__trial_index__"  # Tune's Repeater puts the repeat's index under this key


def trial_name(index: int) -> str:
    """A trial's name and folder: ``t000``, ``t001``, ... in the order the stage's searcher proposed it."""
    return f"t{index:03d}"


def search_problem(search: str, params: Mapping[str, Any]) -> str | None:
    """Why ``params`` can't be searched with ``search`` (None: they can); checked when the file is read."""
    space = searched(params)
    kind = SEARCHERS[search]
    if kind.enumerates:
        continuous = [k for k, v in space.items() if next(iter(v)) in CONTINUOUS]
        if continuous:
            return f"search: {search} enumerates values; {continuous} are continuous (use choice or grid lists)"
    if kind.adaptive:
        grids = [k for k, v in space.items() if "grid" in v]
        if grids:
            return f"search: {search} proposes values itself; {grids} use grid (use choice, or search: random)"
        if not space:
            return f"search: {search} needs at least one distribution in params (loguniform, uniform or choice)"
    return None


def configurations(stage: StageSpec) -> int:
    """How many configurations the stage samples: ``num_samples``, times every grid's size for
    random and grid search (as Tune's grid_search)."""
    tune = stage.tune
    if SEARCHERS[tune.search].adaptive:
        return tune.num_samples
    sizes = [
        len(v.get("grid") or v.get("choice"))
        for v in searched(stage.params).values()
        if "grid" in v or ("choice" in v and SEARCHERS[tune.search].enumerates)
    ]
    return tune.num_samples * math.prod(sizes)


def planned_trials(stage: StageSpec) -> int:
    """The stage's trials: each configuration ``repeats`` times."""
    return configurations(stage) * stage.tune.repeats
