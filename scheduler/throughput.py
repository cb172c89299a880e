"""Relative throughput of job classes on accelerator models, and the normalised compute unit (NCU).

``seeds/throughput.yaml`` holds measured cells (each cited) and an estimation rule for the rest: the class's
working precision's peak TFLOPS times a per-software-stack efficiency factor, relative to the reference model.
The loader fills every cell it can so that lookups are O(1) dictionary reads on the hot path::

    >>> from scheduler.throughput import load_throughput
    >>> matrix = load_throughput()
    >>> matrix.relative("A100", "llm-pretrain")
    1.0
    >>> matrix.cell("H100", "llm-pretrain").estimated
    False

One NCU-hour is one hour of the reference model's throughput for the job's class, so a job that runs for an
hour on a model with relative throughput 2.5 consumes 2.5 NCU-hours.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scheduler.catalog import SEEDS_DIR, Catalog, Precision, SoftwareStack, load_catalog
from scheduler.errors import ConfigError, load_yaml_mapping, validate_model

DEFAULT_THROUGHPUT_PATH = SEEDS_DIR / "throughput.yaml"


class JobClass(StrEnum):
    """Workload families whose relative speed across models is measured separately."""

    LLM_PRETRAIN = "llm-pretrain"
    LLM_FINETUNE = "llm-finetune"
    CV_TRAIN = "cv-train"
    RECSYS_TRAIN = "recsys-train"
    LLM_INFERENCE = "llm-inference"
    CV_INFERENCE = "cv-inference"
    GENERIC = "generic"

    @property
    def is_training(self) -> bool:
        return self not in (JobClass.LLM_INFERENCE, JobClass.CV_INFERENCE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassSpec(_Strict):
    """How a class is estimated where nothing was measured: the precision it mostly runs in."""

    precision: Precision
    description: str = ""


class MeasuredCell(_Strict):
    value: float = Field(gt=0)
    source: str = Field(min_length=3)
    estimated: bool = False
    note: str | None = None


class Estimation(_Strict):
    """relative = peak(model, precision) × efficiency(model) / (peak(ref, precision) × efficiency(ref))."""

    stack_efficiency: dict[SoftwareStack, float] = Field(default_factory=dict)
    model_efficiency: dict[str, float] = Field(default_factory=dict)
    default_efficiency: float = Field(default=1.0, gt=0, le=2)
    opaque_relative: float = Field(default=1.0, gt=0, description="assumed for models without specs")
    source: str = Field(min_length=3)

    @model_validator(mode="after")
    def _positive(self) -> Estimation:
        for name, value in [*self.stack_efficiency.items(), *self.model_efficiency.items()]:
            if not 0 < value <= 2:
                raise ValueError(f"efficiency for {name} must be in (0, 2], got {value}")
        return self


class ThroughputDocument(_Strict):
    version: int = Field(ge=1)
    reference: str
    classes: dict[JobClass, ClassSpec]
    estimation: Estimation
    cells: dict[str, dict[JobClass, MeasuredCell]] = Field(default_factory=dict)


class Cell(_Strict):
    """A filled matrix cell: measured (with its source) or estimated by the rule."""

    value: float
    estimated: bool
    source: str


class ThroughputMatrix:
    """Complete model × class matrix of relative throughput (reference model = 1.0 for every class)."""

    def __init__(self, document: ThroughputDocument, catalog: Catalog, source: str | Path) -> None:
        self.source = str(source)
        self.catalog = catalog
        if document.reference != catalog.reference:
            raise ConfigError(
                source,
                "reference",
                f"{document.reference!r} differs from the catalog's reference {catalog.reference!r}",
            )
        missing_classes = [c.value for c in JobClass if c not in document.classes]
        if missing_classes:
            raise ConfigError(source, "classes", f"missing classes {', '.join(missing_classes)}")
        for model in (*document.cells, *document.estimation.model_efficiency):
            if model not in catalog:
                raise ConfigError(source, f"cells.{model}", "unknown model", allowed=catalog.names)
        self.reference = document.reference
        self.classes = dict(document.classes)
        self._cells: dict[tuple[str, JobClass], Cell] = {}
        for model, row in document.cells.items():
            for job_class, measured in row.items():
                self._cells[(model, job_class)] = Cell(
                    value=measured.value, estimated=measured.estimated, source=measured.source
                )
        for entry in catalog:
            for job_class, spec in document.classes.items():
                if (entry.model, job_class) not in self._cells:
                    cell = self._estimate(entry.model, job_class, spec, document.estimation)
                    if cell is not None:
                        self._cells[(entry.model, job_class)] = cell
        for job_class in JobClass:
            if self._cells.get((self.reference, job_class)) is None:
                raise ConfigError(source, f"cells.{self.reference}.{job_class}", "reference cell missing")
        self._relative = {key: cell.value for key, cell in self._cells.items()}

    def _efficiency(self, model: str, estimation: Estimation) -> float:
        if model in estimation.model_efficiency:
            return estimation.model_efficiency[model]
        stack = self.catalog[model].software_stack
        if stack is not None and stack in estimation.stack_efficiency:
            return estimation.stack_efficiency[stack]
        return estimation.default_efficiency

    def _estimate(self, model: str, job_class: JobClass, spec: ClassSpec, estimation: Estimation) -> Cell | None:
        entry = self.catalog[model]
        if job_class.is_training and not entry.training:
            return None
        if entry.opaque:
            return Cell(value=estimation.opaque_relative, estimated=True, source="opaque model: assumed")
        reference = self.catalog[self.reference]
        for precision in _fallback_precisions(spec.precision):
            mine, ref = entry.peak_tflops.get(precision), reference.peak_tflops.get(precision)
            if mine is not None and ref:
                value = (
                    mine * self._efficiency(model, estimation) / (ref * self._efficiency(self.reference, estimation))
                )
                basis = f"peak {precision.value} × efficiency ({estimation.source})"
                return Cell(value=round(value, 4), estimated=True, source=basis)
        return None

    def cell(self, model: str, job_class: JobClass | str) -> Cell | None:
        return self._cells.get((model, JobClass(job_class)))

    def relative(self, model: str, job_class: JobClass | str) -> float:
        """Relative throughput of ``job_class`` on ``model``; 0.0 where the model cannot run the class."""
        return self._relative.get((model, JobClass(job_class)), 0.0)

    def ncu_hours(self, model: str, job_class: JobClass | str, device_hours: float) -> float:
        """NCU-hours consumed by ``device_hours`` of ``model`` running a job of ``job_class``."""
        return device_hours * self.relative(model, job_class)

    def models_for(self, job_class: JobClass | str) -> list[str]:
        """Models that can run ``job_class``, fastest first (ties by name, so the order is deterministic)."""
        job_class = JobClass(job_class)
        usable = [(m.model, self._relative.get((m.model, job_class), 0.0)) for m in self.catalog]
        return [model for model, value in sorted(usable, key=lambda mv: (-mv[1], mv[0])) if value > 0]


def _fallback_precisions(precision: Precision) -> tuple[Precision, ...]:
    # bf16 and fp16 run on the same tensor units on every listed part; fp32 is the last resort.
    order = {
        Precision.BF16: (Precision.BF16, Precision.FP16, Precision.FP32),
        Precision.FP16: (Precision.FP16, Precision.BF16, Precision.FP32),
        Precision.INT8: (Precision.INT8, Precision.FP16, Precision.BF16),
        Precision.FP32: (Precision.FP32,),
    }
    return order[precision]


def parse_throughput(data: object, catalog: Catalog, source: str | Path = "<throughput>") -> ThroughputMatrix:
    document = validate_model(ThroughputDocument, data, source)
    return ThroughputMatrix(document, catalog, source)


def load_throughput(path: str | Path | None = None, catalog: Catalog | None = None) -> ThroughputMatrix:
    """Load ``seeds/throughput.yaml`` (or ``path``) against ``catalog`` (default catalog if omitted)."""
    if catalog is None:
        return _load_default(str(Path(path) if path is not None else DEFAULT_THROUGHPUT_PATH))
    resolved = Path(path) if path is not None else DEFAULT_THROUGHPUT_PATH
    return parse_throughput(load_yaml_mapping(resolved), catalog, resolved)


@cache
def _load_default(path: str) -> ThroughputMatrix:
    return parse_throughput(load_yaml_mapping(path), load_catalog(), path)
