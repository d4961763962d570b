"""The label sets of FETAL_PLANES_DB tasks, in the order a model's outputs use."""

from __future__ import annotations

from fetalplanes.core.errors import UsageError

PLANES: tuple[str, ...] = (
    "Fetal abdomen",
    "Fetal brain",
    "Fetal femur",
    "Fetal thorax",
    "Maternal cervix",
    "Other",
)

# Brain sub-planes. FETAL_PLANES_DB also labels 143 brain images "Other" (a non-standard
# brain plane); the `brain` task leaves them out because they are not a sub-plane class.
BRAIN_PLANES: tuple[str, ...] = ("Trans-thalamic", "Trans-cerebellum", "Trans-ventricular")

TASKS: dict[str, tuple[str, ...]] = {"planes": PLANES, "brain": BRAIN_PLANES}


def classes_for_task(task: str) -> tuple[str, ...]:
    """Return the class names of ``task`` or raise a UsageError (a ValueError) listing the valid tasks."""
    try:
        return TASKS[task]
    except KeyError:
        raise UsageError(f"unknown task {task!r}; choose one of {sorted(TASKS)}") from None
