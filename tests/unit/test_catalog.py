"""The shipped accelerator catalog and throughput matrix, and how their loaders reject bad input."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.catalog import CITED_FIELDS, Catalog, load_catalog, normalise_name
from scheduler.errors import ConfigError
from scheduler.throughput import JobClass, ThroughputMatrix, load_throughput

REQUIRED_MODELS = {
    "nvidia": [
        "H100",
        "H800",
        "H20",
        "A100",
        "A800",
        "L40S",
        "V100-32G",
        "V100-16G",
        "T4",
        "K80",
        "P100",
        "A10",
    ],
    "huawei": ["Ascend910B", "Ascend910C", "Ascend310P", "Ascend910"],
    "cambricon": ["MLU370", "MLU590", "MLU270"],
    "kunlunxin": ["P800", "Kunlun"],
    "hygon": ["K100", "Z100"],
    "iluvatar": ["BI-V150"],
    "metax": ["C500"],
    "moorethreads": ["S4000"],
    "amd": ["MI300X"],
    "undisclosed": ["G1", "G2", "G3"],
}
DOMESTIC_VENDORS = {"huawei", "cambricon", "kunlunxin", "hygon", "iluvatar", "metax", "moorethreads"}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def matrix() -> ThroughputMatrix:
    return load_throughput()


@pytest.fixture(scope="module")
def written_cells() -> dict[str, dict[str, dict[str, Any]]]:
    """The cells exactly as written in seeds/throughput.yaml (before the rule fills the rest)."""
    path = Path(__file__).resolve().parents[2] / "seeds" / "throughput.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    cells: dict[str, dict[str, dict[str, Any]]] = data["cells"]
    return cells


# ---------------------------------------------------------------------------------------- shipped catalog


def test_shipped_catalog_loads_with_a100_reference(catalog: Catalog) -> None:
    assert catalog.reference == "A100"
    assert len(catalog) >= 30
    assert catalog.source.endswith("accelerators.yaml")


@pytest.mark.parametrize(
    ("vendor", "model"), [(vendor, model) for vendor, models in REQUIRED_MODELS.items() for model in models]
)
def test_required_model_present_with_vendor(catalog: Catalog, vendor: str, model: str) -> None:
    assert model in catalog
    assert catalog[model].vendor == vendor


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("V100M32", "V100-32G"),
        ("v100", "V100-32G"),
        ("V100", "V100-32G"),
        ("Tesla V100-SXM2-32GB", "V100-32G"),
        ("V100M16", "V100-16G"),
        ("Tesla V100-SXM2-16GB", "V100-16G"),
        ("G1", "G1"),
        ("g3", "G3"),
        ("Tesla T4", "T4"),
        ("tesla-t4", "T4"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("a100", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("H100-SXM", "H100"),
        ("k80", "K80"),
        ("Tesla K80", "K80"),
        ("p100", "P100"),
        ("Tesla P100-PCIE-16GB", "P100"),
        ("NVIDIA A10", "A10"),
        ("MLU370-X8", "MLU370"),
        ("K100-AI", "K100"),
        ("DCU K100", "K100"),
        ("ascend 910b", "Ascend910B"),
    ],
)
def test_alias_resolution(catalog: Catalog, name: str, model: str) -> None:
    assert catalog.resolve(name).model == model


def test_unknown_name_lists_known_models(catalog: Catalog) -> None:
    assert catalog.lookup("TPUv4") is None
    with pytest.raises(ConfigError) as excinfo:
        catalog.resolve("TPUv4", source="trace.csv", field="rows[3].model")
    message = str(excinfo.value)
    assert message.startswith("trace.csv: rows[3].model: unknown accelerator model 'TPUv4' (allowed: ")
    assert "A100" in message and "Ascend910B" in message


def test_normalise_name_is_case_and_punctuation_insensitive() -> None:
    assert normalise_name("Tesla V100-SXM2 32GB") == "teslav100sxm232gb"
    assert normalise_name("NVIDIA A100-SXM4-80GB") == normalise_name("nvidia a100 sxm4 80gb")


def test_domestic_flags_follow_vendor(catalog: Catalog) -> None:
    for entry in catalog:
        assert entry.domestic == (entry.vendor in DOMESTIC_VENDORS), entry.model
    assert catalog["Ascend910B"].domestic
    assert not catalog["H20"].domestic


def test_software_stacks_of_domestic_parts(catalog: Catalog) -> None:
    expected = {
        "Ascend910B": "cann",
        "MLU370": "neuware",
        "P800": "xre",
        "K100": "dtk",
        "BI-V150": "corex",
        "C500": "maca",
        "S4000": "musa",
        "MI300X": "rocm",
        "H100": "cuda",
    }
    for model, stack in expected.items():
        assert catalog[model].software_stack == stack, model


def test_opaque_models_have_no_numbers(catalog: Catalog) -> None:
    opaque = [entry for entry in catalog if entry.opaque]
    assert {"G1", "G2", "G3"} <= {entry.model for entry in opaque}
    for entry in opaque:
        assert entry.memory_gib is None and entry.tdp_w is None, entry.model
        assert not entry.peak_tflops.known(), entry.model
        assert entry.interconnect is None or (
            entry.interconnect.domain_size is None and entry.interconnect.bandwidth_gbps is None
        ), entry.model
    g1 = catalog["G1"]
    assert g1.vendor == "undisclosed" and g1.kind == "gpu" and not g1.domestic
    assert "G1-G3" in g1.source["model"]


def test_historical_entries_cite_seed_table(catalog: Catalog) -> None:
    for model in ("Ascend910", "MLU270", "Kunlun"):
        entry = catalog[model]
        assert entry.historical, model
        assert any("000_bd8a97e2c81c7dbb.txt" in citation for citation in entry.source.values()), model
    assert catalog["Ascend910"].peak_tflops.int8 == 512
    assert catalog["Ascend910"].tdp_w == 310
    assert catalog["MLU270"].tdp_w == 70 and not catalog["MLU270"].training
    assert catalog["Kunlun"].tdp_w == 150


def test_every_number_group_is_cited(catalog: Catalog) -> None:
    for entry in catalog:
        if "all" in entry.source:
            continue
        if entry.memory_gib is not None:
            assert "memory_gib" in entry.source, entry.model
        if entry.tdp_w is not None:
            assert "tdp_w" in entry.source, entry.model
        if entry.peak_tflops.known():
            assert "peak_tflops" in entry.source, entry.model
        assert set(entry.source) <= {*CITED_FIELDS, "model"}, entry.model


def test_inference_only_parts_and_islands(catalog: Catalog) -> None:
    assert not catalog["Ascend310P"].training
    assert catalog["T4"].training
    assert catalog["H100"].island_size == 8
    assert catalog["Ascend910C"].island_size == 384
    assert catalog["L40S"].island_size == 1
    assert catalog["G1"].island_size == 1


# -------------------------------------------------------------------------------------- throughput matrix


def test_reference_cells_are_one(matrix: ThroughputMatrix) -> None:
    for job_class in JobClass:
        cell = matrix.cell("A100", job_class)
        assert cell is not None
        assert cell.value == 1.0 and not cell.estimated
        assert cell.source == "reference (definition)"
        assert matrix.relative("A100", job_class) == 1.0


def test_every_training_capable_model_has_a_pretrain_cell(catalog: Catalog, matrix: ThroughputMatrix) -> None:
    for entry in catalog:
        if entry.training and not entry.opaque:
            cell = matrix.cell(entry.model, JobClass.LLM_PRETRAIN)
            assert cell is not None and cell.value > 0, entry.model


def test_inference_only_model_gets_no_training_cells(matrix: ThroughputMatrix) -> None:
    assert matrix.cell("Ascend310P", JobClass.LLM_PRETRAIN) is None
    assert matrix.relative("Ascend310P", "cv-train") == 0.0
    assert matrix.relative("Ascend310P", "cv-inference") > 0


def test_written_cells_have_sources_and_enough_measurements(
    written_cells: dict[str, dict[str, dict[str, Any]]], matrix: ThroughputMatrix
) -> None:
    measured = estimated = 0
    for model, row in written_cells.items():
        for job_class, spec in row.items():
            cell = matrix.cell(model, job_class)
            assert cell is not None and cell.source == spec["source"], (model, job_class)
            assert len(spec["source"]) >= 3
            if spec.get("estimated", False):
                estimated += 1
            elif model != "A100":
                measured += 1
                assert "MLPerf" in spec["source"], (model, job_class)
    assert measured >= 10
    assert measured + estimated + len(JobClass) >= 25


def test_rule_filled_cells_are_flagged_estimated(
    written_cells: dict[str, dict[str, dict[str, Any]]], catalog: Catalog, matrix: ThroughputMatrix
) -> None:
    for entry in catalog:
        for job_class in JobClass:
            cell = matrix.cell(entry.model, job_class)
            if cell is None or job_class.value in written_cells.get(entry.model, {}):
                continue
            assert cell.estimated, (entry.model, job_class)
            expected = "opaque model: assumed" if entry.opaque else "peak "
            assert cell.source.startswith(expected), (entry.model, job_class, cell.source)


def test_measured_h100_cells(matrix: ThroughputMatrix) -> None:
    cell = matrix.cell("H100", "llm-pretrain")
    assert cell is not None and not cell.estimated
    assert cell.value == pytest.approx(2.782)
    assert "MLPerf Training v2.1" in cell.source
    assert matrix.relative("H100", "cv-inference") == pytest.approx(2.167)


def test_models_for_is_sorted_and_deterministic(matrix: ThroughputMatrix) -> None:
    first = matrix.models_for("llm-pretrain")
    assert first == matrix.models_for(JobClass.LLM_PRETRAIN)
    values = [matrix.relative(model, "llm-pretrain") for model in first]
    assert values == sorted(values, reverse=True)
    assert first[0] == "H100"
    assert "Ascend310P" not in first and "MLU270" not in first
    for left, right in itertools.pairwise(first):
        if matrix.relative(left, "llm-pretrain") == matrix.relative(right, "llm-pretrain"):
            assert left < right
    ties = [model for model in first if model in {"G1", "G2", "G3"}]
    assert ties == ["G1", "G2", "G3"]


def test_ncu_hours(matrix: ThroughputMatrix) -> None:
    assert matrix.ncu_hours("A100", "generic", 10.0) == 10.0
    assert matrix.ncu_hours("H100", "llm-pretrain", 2.0) == pytest.approx(2 * 2.782)
    assert matrix.ncu_hours("T4", "cv-inference", 3.0) == pytest.approx(3 * 0.161)
    assert matrix.ncu_hours("Ascend310P", "llm-pretrain", 5.0) == 0.0
    assert matrix.ncu_hours("G2", "generic", 4.0) == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------------- bad input


def _model(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "model": "A100",
        "vendor": "nvidia",
        "family": "ampere",
        "kind": "gpu",
        "memory_gib": 80,
        "peak_tflops": {"bf16": 312, "fp16": 312},
        "tdp_w": 400,
        "domestic": False,
        "source": {"all": "NVIDIA A100 Tensor Core GPU Datasheet"},
    }
    entry.update(overrides)
    return entry


VENDORS = [{"vendor": "nvidia", "name": "NVIDIA", "ray_resource": "GPU", "visibility_env": "CUDA_VISIBLE_DEVICES"}]


def _write(tmp_path: Path, name: str, document: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def _catalog_error(tmp_path: Path, *models: dict[str, Any]) -> str:
    path = _write(tmp_path, "cat.yaml", {"version": 1, "reference": "A100", "vendors": VENDORS, "models": list(models)})
    with pytest.raises(ConfigError) as excinfo:
        load_catalog(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    return message


def test_unknown_kind_names_file_field_and_allowed_values(tmp_path: Path) -> None:
    message = _catalog_error(tmp_path, _model(kind="tpu"))
    assert "models[0].kind: " in message
    assert "'tpu'" in message
    assert message.endswith("(allowed: gpu, npu, mlu, xpu, dcu)")


def test_negative_memory_is_rejected(tmp_path: Path) -> None:
    message = _catalog_error(tmp_path, _model(memory_gib=-8))
    assert "models[0].memory_gib: " in message
    assert "greater than 0" in message


def test_number_without_source_is_rejected(tmp_path: Path) -> None:
    message = _catalog_error(tmp_path, _model(source={"memory_gib": "data sheet", "peak_tflops": "data sheet"}))
    assert "models[0]: " in message
    assert "no source for tdp_w; add source.<field> or source.all" in message


def test_unknown_source_key_is_rejected(tmp_path: Path) -> None:
    message = _catalog_error(tmp_path, _model(source={"all": "data sheet", "price": "a web shop"}))
    assert "models[0].source: " in message
    assert "unknown source key 'price'" in message


def test_duplicate_alias_is_rejected(tmp_path: Path) -> None:
    second = _model(model="H100", aliases=["A-100"], source={"all": "NVIDIA H100 datasheet"})
    message = _catalog_error(tmp_path, _model(), second)
    assert message.endswith("models[1].aliases: 'A-100' already names model 'A100'")


def test_opaque_model_with_numbers_is_rejected(tmp_path: Path) -> None:
    message = _catalog_error(tmp_path, _model(), _model(model="G9", opaque=True))
    assert "models[1]: " in message
    assert "an opaque model publishes no numbers; leave them null" in message


def test_current_model_needs_memory_and_peak_but_not_tdp(tmp_path: Path) -> None:
    no_tdp = _model(tdp_w=None)
    path = _write(tmp_path, "ok.yaml", {"version": 1, "reference": "A100", "vendors": VENDORS, "models": [no_tdp]})
    assert load_catalog(path)["A100"].tdp_w is None
    message = _catalog_error(tmp_path, _model(memory_gib=None, peak_tflops={}))
    assert "a current model needs memory_gib and peak_tflops (missing: memory_gib, peak_tflops)" in message


def test_malformed_yaml_is_one_line_with_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nreference: A100\nmodels:\n  - model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_catalog(path)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: malformed YAML: line ")
    assert "column" in message


def test_model_of_an_unknown_vendor_is_rejected(tmp_path: Path) -> None:
    message = _catalog_error(tmp_path, _model(vendor="acme-chips"))
    assert message.endswith("models[0].vendor: unknown vendor 'acme-chips' (allowed: nvidia)")


def test_vendor_facts_come_from_the_catalog() -> None:
    catalog = load_catalog()
    assert {v.vendor for v in catalog.vendors} >= {m.vendor for m in catalog}
    assert catalog.vendor("huawei").ray_resource == "NPU"
    assert catalog.vendor("cambricon").visibility_env == "MLU_VISIBLE_DEVICES"
    with pytest.raises(KeyError, match="unknown vendor 'acme'"):
        catalog.vendor("acme")


def test_unknown_reference_model_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "cat.yaml", {"version": 1, "reference": "B200", "vendors": VENDORS, "models": [_model()]})
    with pytest.raises(ConfigError) as excinfo:
        load_catalog(path)
    assert str(excinfo.value) == f"{path}: reference: unknown model 'B200' (allowed: A100)"


def _throughput_document(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "version": 1,
        "reference": "A100",
        "classes": {job_class.value: {"precision": "fp16"} for job_class in JobClass},
        "estimation": {"source": "test assumptions"},
        "cells": {},
    }
    document.update(overrides)
    return document


def test_throughput_unknown_model_in_cells(tmp_path: Path, catalog: Catalog) -> None:
    document = _throughput_document(cells={"TPUv4": {"generic": {"value": 2.0, "source": "a blog"}}})
    path = _write(tmp_path, "tp.yaml", document)
    with pytest.raises(ConfigError) as excinfo:
        load_throughput(path, catalog)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: cells.TPUv4: unknown model (allowed: H100, ")
    assert "A100" in message


def test_throughput_reference_mismatch(tmp_path: Path, catalog: Catalog) -> None:
    path = _write(tmp_path, "tp.yaml", _throughput_document(reference="H100"))
    with pytest.raises(ConfigError) as excinfo:
        load_throughput(path, catalog)
    assert str(excinfo.value) == f"{path}: reference: 'H100' differs from the catalog's reference 'A100'"


def test_throughput_missing_class(tmp_path: Path, catalog: Catalog) -> None:
    document = _throughput_document()
    del document["classes"]["recsys-train"]
    path = _write(tmp_path, "tp.yaml", document)
    with pytest.raises(ConfigError) as excinfo:
        load_throughput(path, catalog)
    assert str(excinfo.value) == f"{path}: classes: missing classes recsys-train"


def test_throughput_cell_without_source(tmp_path: Path, catalog: Catalog) -> None:
    document = _throughput_document(cells={"H100": {"generic": {"value": 2.0}}})
    path = _write(tmp_path, "tp.yaml", document)
    with pytest.raises(ConfigError) as excinfo:
        load_throughput(path, catalog)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: cells.H100.generic.source: ")
    assert "Field required" in message
