"""Every board name the fixtures print, and the catalog model it must map to (``None``: the catalog does not have
the part, and the device is reported unknown instead of being given a neighbour's model). The list is checked
against what the parsers actually read from the fixtures, so a new capture with a new name fails here until the
name is added with its expected model."""

from __future__ import annotations

from pathlib import Path

import pytest
from captures import CAPTURES, make_capture_shim

from agents.shims.base import ModelResolver
from scheduler.catalog import load_catalog

# (vendor, name as printed, other names printed, MiB per device) -> catalog model
EXPECTED: dict[tuple[str, str, tuple[str, ...], float | None], str | None] = {
    ("huawei", "310", ("MiniD",), 8192): None,  # Ascend 310: no catalog model
    ("huawei", "910A", ("Ascend 910A",), 32768): "Ascend910",
    ("huawei", "xxx", ("Ascend 910A",), 32768): "Ascend910",  # anonymised table name, -m has the chip
    ("huawei", "910B2C", (), 65536): "Ascend910B",
    ("huawei", "910B2", (), 65536): "Ascend910B",
    ("huawei", "910B3", (), 65536): "Ascend910B",
    ("huawei", "910B3", ("Ascend 910B3",), 65536): "Ascend910B",
    ("huawei", "910B4", (), 32768): "Ascend910B",
    ("huawei", "910ProB", (), 32768): "Ascend910",
    ("huawei", "Ascend910", (), 65536): "Ascend910C",  # an A3 die
    ("cambricon", "MLU370-X4", (), 23308): None,  # a different board from the catalogued MLU370-X8
    ("cambricon", "MLU370-X8", (), 23374): "MLU370",
    ("cambricon", "MLU370-X8", (), 24576): "MLU370",
    ("hygon", "DCU xxxx", (), 65520): None,  # anonymised in the capture
    ("hygon", "DCU K100_AI", (), 65520): "K100",
    ("hygon", "", (), None): None,  # the concise table prints no name
    ("kunlunxin", "R300", (), 32768): None,
    ("kunlunxin", "P800 OAM", (), 98304): "P800",
    ("iluvatar", "Iluvatar BI-V150", (), 32768): "BI-V150",
    ("metax", "MetaX C550", (), 65536): None,  # C550 is not the catalogued C500
    ("metax", "MetaX C500", (), 65536): "C500",
    ("moorethreads", "MTT S4000", (), 49152): "S4000",
    ("moorethreads", "MTT S5000", (), 81920): None,
    ("amd", "Navi 32 [Radeon RX 7700 XT / 7800 XT]", (), 16368.0): None,
    ("amd", "MI300X-O", (), None): "MI300X",
}

# Names the same parts could print with another memory: ambiguous names never resolve without the memory.
AMBIGUOUS = [("Ascend910", 32768), ("Ascend910", None), ("Ascend910", 131072)]


def _seen(tmp_path: Path) -> set[tuple[str, str, tuple[str, ...], float | None]]:
    seen = set()
    for capture in CAPTURES:
        directory = tmp_path / capture.name
        directory.mkdir()
        for device in make_capture_shim(capture, directory).discover():
            others = tuple(device.other_names)
            memory = round(device.memory_total_mib) if device.memory_total_mib else None
            seen.add((device.vendor, device.name, others, memory))
    return seen


@pytest.mark.parametrize(("key", "model"), list(EXPECTED.items()), ids=[f"{k[0]}:{k[1] or '-'}" for k in EXPECTED])
def test_board_name_maps_to_its_model_or_unknown(
    key: tuple[str, str, tuple[str, ...], float | None], model: str | None
) -> None:
    vendor, name, others, memory = key
    entry, notes = ModelResolver(load_catalog()).resolve(name, vendor, memory, others)
    assert (entry.model if entry else None) == model
    if model is None:
        assert notes and notes[0].startswith("device model unknown")


@pytest.mark.parametrize(("name", "memory"), AMBIGUOUS)
def test_ambiguous_name_without_matching_memory_is_unknown(name: str, memory: float | None) -> None:
    entry, notes = ModelResolver(load_catalog()).resolve(name, "huawei", memory)
    assert entry is None and notes[0].startswith("device model unknown")


def test_every_board_name_in_the_real_captures_is_listed(tmp_path: Path) -> None:
    seen = {(v, n, o, m) for v, n, o, m in _seen(tmp_path)}
    listed = {(v, n, o, round(m) if m else None) for v, n, o, m in EXPECTED}
    assert seen <= listed, f"add these to EXPECTED with their models: {sorted(seen - listed, key=str)}"
