"""map_node on recorded and synthetic Node objects, the HAMi register formats, and the name table's validation."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.catalog import load_catalog
from scheduler.errors import ConfigError
from scheduler.live.inventory.base import InventoryNode, LeftOut
from scheduler.live.inventory.kubernetes import (
    RegisterError,
    map_node,
    node_objects,
    parse_quantity,
    parse_register,
)
from scheduler.live.inventory.kubernetes_names import DEFAULT_NAMES_PATH, parse_kubernetes_names
from scheduler.state import ClusterState

NODES = Path(__file__).resolve().parent.parent / "fixtures" / "kubernetes" / "nodes"


def node(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((NODES / name).read_text())
    return data


def mapped(name: str) -> InventoryNode:
    seen = map_node(node(name))
    assert isinstance(seen, InventoryNode), seen
    return seen


def left_out(name: str) -> str:
    seen = map_node(node(name))
    assert isinstance(seen, LeftOut), seen
    return seen.reason


def test_gfd_h100_node_maps_with_topology_and_the_operator_taint_tolerated() -> None:
    seen = mapped("h100-hgx.json")
    n = seen.node
    assert (n.model, n.devices, n.cpu_milli, n.memory_mib) == ("H100", 8, 223500, 2113380952 // 1024)
    assert (n.site, n.region, n.island, n.switch, seen.zone) == ("bj1", "cn-north", "bj1-hgx-07", "bj1-leaf-03", "bj1")
    assert seen.schedulable and seen.reasons == () and seen.vendor == "nvidia"
    assert n.labels == {"zhisuan.io/island": "bj1-hgx-07", "zhisuan.io/switch": "bj1-leaf-03"}


def test_time_slicing_replicas_are_virtual_and_whole_devices_are_divided_out() -> None:
    seen = mapped("h100-time-slicing.yaml")
    assert seen.node.devices == 8
    assert seen.virtual == {"nvidia.com/gpu": 32.0}


def test_devices_come_from_allocatable_not_capacity() -> None:
    obj = node("h100-hgx.json")
    obj["status"]["allocatable"]["nvidia.com/gpu"] = "7"  # one GPU marked unhealthy by the device plugin
    seen = map_node(obj)
    assert isinstance(seen, InventoryNode) and seen.node.devices == 7


def test_real_gfd_labels_of_an_a100_40gb_are_reported_as_not_in_the_catalog() -> None:
    assert "'A100-SXM4-40GB' from label nvidia.com/gpu.product" in left_out("gfd-dgx2h-a100.yaml")


def test_mig_single_strategy_has_no_whole_devices() -> None:
    assert "slices (MIG single strategy)" in left_out("gfd-mig-single.yaml")


def test_hami_json_register_counts_physical_devices_not_the_split() -> None:
    seen = mapped("hami-json-h100.yaml")
    assert seen.node.model == "H100" and seen.node.devices == 7  # eight registered, one without health
    assert seen.virtual == {"nvidia.com/gpu": 80.0}
    assert len(seen.registered) == 8 and {d.split for d in seen.registered} == {10}
    assert any("reported unhealthy" in r for r in seen.reasons)


def test_the_recorded_hami_examples_parse_in_both_csv_forms() -> None:
    seven = node("hami-protocol-7field.yaml")["metadata"]["annotations"]["hami.io/node-nvidia-register"]
    nine = node("hami-protocol-9field.yaml")["metadata"]["annotations"]["hami.io/node-nvidia-register"]
    for value in (seven, nine):
        devices = parse_register(value, type_prefix="NVIDIA-")
        assert [(d.split, d.memory_mib, d.cores, d.type, d.healthy) for d in devices] == [
            (10, 32768, 100, "Tesla V100-PCIE-32GB", True)
        ] * 2
    assert [d.index for d in parse_register(nine)] == [0, 1]
    # The real 9-field example registers NVIDIA and Cambricon devices on one node: not one Zhisuan model.
    assert "several vendors (cambricon, nvidia)" in left_out("hami-protocol-9field.yaml")
    assert "'Tesla V100-PCIE-32GB' from the register annotation" in left_out("hami-protocol-7field.yaml")


def test_volcano_vgpu_register_has_six_fields() -> None:
    value = "GPU-abc,10,40960,A100-SXM4-40GB,true,hami-core:GPU-def,10,40960,A100,false,mig:"
    devices = parse_register(value, "volcano")
    assert [(d.id, d.split, d.memory_mib, d.healthy, d.index) for d in devices] == [
        ("GPU-abc", 10, 40960, True, 0),
        ("GPU-def", 10, 40960, False, 1),
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("GPU-a,10,32768:", "3 fields, HAMi writes 7, 8 or 9"),
        ("GPU-a,10,x,100,NVIDIA-T4,0,true:", "memory 'x' is not an integer"),
        ("GPU-a,10,1,100,NVIDIA-T4,0,maybe:", "health 'maybe' is not a boolean"),
        ('[{"id": 3}]', "not an object with an 'id'"),
        ("[]", "non-empty list"),
        ("[{", "malformed JSON"),
        ("GPU-a", "neither a JSON list"),
    ],
)
def test_malformed_registers_say_what_is_wrong(value: str, problem: str) -> None:
    with pytest.raises(RegisterError, match=re.escape(problem)):
        parse_register(value)


def test_a_malformed_annotation_leaves_that_node_out_and_names_the_annotation() -> None:
    reason = left_out("hami-malformed.yaml")
    assert reason.startswith("malformed annotation hami.io/node-nvidia-register: device 0: memory '80GiB'")


def test_ascend_models_come_from_the_chip_label_or_the_resource_name() -> None:
    a3 = mapped("ascend-a3-910c.yaml")
    assert (a3.node.model, a3.node.devices, a3.vendor, a3.node.island) == ("Ascend910C", 16, "huawei", "gy1-superpod-2")
    assert a3.schedulable  # the huawei.com/Ascend910 taint is tolerated
    p310 = mapped("ascend-310p.yaml")
    assert (p310.node.model, p310.node.devices) == ("Ascend310P", 4)
    # Chip names resolve through the catalog's aliases (seeds/accelerators.yaml), whatever they are today.
    found = load_catalog().lookup("910B3")
    if found is None:
        assert "'910B3' from label node.kubernetes.io/npu.chip.name" in left_out("ascend-910b3.yaml")
    else:
        assert mapped("ascend-910b3.yaml").node.model == found.model


def test_unknown_resources_are_reported_never_counted() -> None:
    reason = left_out("unknown-vendor.yaml")
    assert "unknown vendor" in reason and "enflame.com/gcu=8" in reason
    assert "CPU-only" in left_out("cpu-only.yaml")
    obj = node("h100-hgx.json")
    obj["status"]["allocatable"]["example.com/fpga"] = "2"
    seen = map_node(obj)
    assert isinstance(seen, InventoryNode) and seen.unknown_resources == {"example.com/fpga": "2"}
    assert seen.node.devices == 8


def test_not_ready_unreachable_and_node_problem_conditions_become_reasons() -> None:
    seen = mapped("h100-not-ready.yaml")
    assert not seen.schedulable
    assert seen.reasons[0] == "KernelDeadlock: DockerHung: task docker:7 blocked for more than 300 seconds."
    assert "taint node.kubernetes.io/unreachable:NoExecute is not tolerated" in seen.reasons
    assert any(r.startswith("Ready is Unknown") for r in seen.reasons)
    cordoned = mapped("h100-cordoned.yaml")
    assert not cordoned.schedulable and "cordoned (spec.unschedulable)" in cordoned.reasons


def test_a_list_or_a_single_object_and_bad_documents() -> None:
    everything = yaml.safe_load((NODES / "cluster-list.json").read_text())
    assert len(node_objects(everything)) == len(list(NODES.glob("*.y*ml"))) + 1
    assert node_objects(node("cpu-only.yaml"))[0]["metadata"]["name"] == "cp-01"
    with pytest.raises(ValueError, match="expected kind Node"):
        node_objects({"kind": "Pod"})
    with pytest.raises(ValueError, match=r"items\[0\] is a Pod"):
        node_objects({"kind": "List", "items": [{"kind": "Pod"}]})
    broken = copy.deepcopy(node("h100-hgx.json"))
    broken["status"]["allocatable"]["cpu"] = "lots"
    seen = map_node(broken)
    assert isinstance(seen, LeftOut) and "status.allocatable[cpu]: 'lots'" in seen.reason


def test_the_mapped_nodes_make_a_cluster_state() -> None:
    objects = node_objects(yaml.safe_load((NODES / "cluster-list.json").read_text()))
    nodes = [s.node for s in map(map_node, objects) if isinstance(s, InventoryNode)]
    state = ClusterState(nodes)
    assert {"bj1/H100", "sh1/H100", "gy1/Ascend910C", "edge-sz/Ascend310P"} <= set(state.pools)
    state.check_invariants()


def test_quantities() -> None:
    assert parse_quantity("223500m") == 223.5
    assert parse_quantity("1056760Ki") == 1056760 * 1024
    assert parse_quantity("1e3") == 1000.0
    assert parse_quantity("1k") == 1000.0
    with pytest.raises(ValueError):
        parse_quantity("12 cores")


def test_the_name_table_is_validated_whole_with_file_and_field() -> None:
    data = yaml.safe_load(DEFAULT_NAMES_PATH.read_text())
    catalog = load_catalog()
    bad_vendor = copy.deepcopy(data)
    bad_vendor["vendors"]["nvidai"] = bad_vendor["vendors"].pop("nvidia")
    with pytest.raises(ConfigError, match=r"kubernetes.yaml: vendors.nvidai: unknown vendor 'nvidai' \(allowed: amd"):
        parse_kubernetes_names(bad_vendor, DEFAULT_NAMES_PATH, catalog)
    twice = copy.deepcopy(data)
    twice["vendors"]["amd"]["devices"].append({"resource": "nvidia.com/gpu"})
    with pytest.raises(ConfigError, match=re.escape("'nvidia.com/gpu' is already listed for vendor nvidia")):
        parse_kubernetes_names(twice, DEFAULT_NAMES_PATH, catalog)
    wrong_model = copy.deepcopy(data)
    wrong_model["vendors"]["huawei"]["devices"][0]["model"] = "H100"
    with pytest.raises(ConfigError, match=r"vendors.huawei.devices\[0\].model: model 'H100' is a nvidia model"):
        parse_kubernetes_names(wrong_model, DEFAULT_NAMES_PATH, catalog)
    typo = copy.deepcopy(data)
    typo["vendors"]["nvidia"]["devcies"] = []
    with pytest.raises(ConfigError, match=r"vendors.nvidia.devcies: unknown field"):
        parse_kubernetes_names(typo, DEFAULT_NAMES_PATH, catalog)
    bad_label = copy.deepcopy(data)
    bad_label["topology"]["site"] = ["not a label!"]
    with pytest.raises(ConfigError, match=r"topology.site"):
        parse_kubernetes_names(bad_label, DEFAULT_NAMES_PATH, catalog)
