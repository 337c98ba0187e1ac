"""The manager's pure parts, without etcd or daemons: key records, placement, the role device
and the local registry."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from sbstore.cluster.device import ClusterDevices, LocalRegistry, PathInaccessible, RoleDevice
from sbstore.cluster.etcd import KeyValue
from sbstore.cluster.keys import BadRecord, ExportSpec, InSync, Keys, NodeInfo, VolumeSpec
from sbstore.cluster.placement import PlacementError, place
from sbstore.cluster.view import ClusterView
from target.blockdev import RamDevice
from target.nvme.spec import PathStatus, StatusType


def _node(name: str, free: int) -> NodeInfo:
    return NodeInfo(name, ("127.0.0.1", 4430), (), {"p": {"size_bytes": 1 << 40,
                                                          "free_bytes": free}})


def test_placement_by_free_space_never_two_on_one_node() -> None:
    nodes = {n.node: n for n in (_node("a", 10 << 30), _node("b", 30 << 30),
                                 _node("c", 20 << 30))}
    assert place(2, nodes) == ["b", "c"]
    assert place(3, nodes) == ["b", "c", "a"]
    with pytest.raises(PlacementError, match="4 live nodes"):
        place(4, nodes)
    poolless = {**nodes, "d": NodeInfo("d", ("127.0.0.1", 1))}
    with pytest.raises(PlacementError, match=r"\(d have no pool\)"):
        place(4, poolless)


def test_records_round_trip_and_bad_ones_are_refused() -> None:
    spec = VolumeSpec("v", str(uuid.uuid4()), 1 << 20, 4096, ("a", "b"))
    assert VolumeSpec.from_json(json.loads(spec.to_json()), "k") == spec
    e = ExportSpec("nqn.2026-11.io.x:e", ((1, "v"),), ("h",), False)
    assert ExportSpec.from_json(json.loads(e.to_json()), "k") == e
    s = InSync(("a",), 7, {"b": 4096})
    assert InSync.from_json(json.loads(s.to_json()), "k") == s
    for bad in ({**json.loads(spec.to_json()), "uuid": "x"},
                {**json.loads(spec.to_json()), "replicas": ["a", "a"]},
                {**json.loads(spec.to_json()), "size_bytes": 4095}, []):
        with pytest.raises(BadRecord):
            VolumeSpec.from_json(bad, "k")


def test_view_parses_the_prefix_and_skips_bad_keys() -> None:
    keys = Keys("/t")
    spec = VolumeSpec("v", str(uuid.uuid4()), 1 << 20, 4096, ("a", "b"))

    def kv(key: str, value: str, create: int = 1, lease: int = 0) -> KeyValue:
        return KeyValue(key, value.encode(), create, create, 1, lease)
    view = ClusterView.parse(keys, [
        kv("/t/volumes/v", spec.to_json()),
        kv("/t/volumes/bad", "{not json"),
        kv("/t/primary/v", json.dumps({"node": "a"}), create=42, lease=9),
        kv("/t/insync/v", InSync(("a", "b")).to_json()),
        kv("/t/nodes/a", json.dumps(_node("a", 1).to_dict()), lease=9),
        kv("/other/x", "{}"),
    ], 50)
    assert view.volumes == {"v": spec}
    assert (view.primaries["v"].node, view.primaries["v"].epoch) == ("a", 42)
    assert view.insync["v"].nodes == ("a", "b") and set(view.nodes) == {"a"}


async def test_role_device_refuses_with_the_ana_status_until_told_to_serve() -> None:
    ram = RamDevice(1 << 20, block_size=4096)
    dev = RoleDevice(ram, "v")
    assert (dev.uuid, dev.block_size, dev.num_blocks) == (ram.uuid, 4096, 256)
    with pytest.raises(PathInaccessible) as refused:
        await dev.write(0, bytes(4096))
    assert (refused.value.sct, refused.value.sc) == (StatusType.PATH,
                                                     PathStatus.ANA_INACCESSIBLE)
    with pytest.raises(PathInaccessible):
        await dev.read(0, 1)
    dev.serve(ram)
    await dev.write(0, b"x" * 4096)
    assert bytes(await dev.read(0, 1)) == b"x" * 4096
    dev.refuse()
    with pytest.raises(PathInaccessible):
        await dev.flush()


def test_registry_survives_a_restart_and_the_hook_wraps_only_cluster_volumes(
        tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path / "cluster.json")
    ram, other = RamDevice(1 << 20), RamDevice(1 << 20)
    reg.add_volume(str(ram.uuid), "v")
    reg.add_export("nqn.2026-11.io.x:e")
    again = LocalRegistry(tmp_path / "cluster.json")
    assert again.volumes == {str(ram.uuid): "v"} and again.exports == {"nqn.2026-11.io.x:e"}
    devices = ClusterDevices(again)

    class Vol:
        def __init__(self, u: uuid.UUID) -> None:
            self.uuid = u
    assert devices.wrap("p", Vol(other.uuid), other) is other
    wrapped = devices.wrap("p", Vol(ram.uuid), ram)
    assert isinstance(wrapped, RoleDevice) and wrapped.active is None
    devices.serve(str(ram.uuid), ram)
    assert wrapped.active is ram and devices.wrap("p", Vol(ram.uuid), ram).active is ram
    devices.refuse(str(ram.uuid))
    assert wrapped.active is None
    (tmp_path / "cluster.json").write_text("{broken")
    assert LocalRegistry(tmp_path / "cluster.json").volumes == {}


def test_a_subsystem_gives_out_controller_ids_from_its_range() -> None:
    from target.subsystem import Subsystem

    sub = Subsystem("nqn.2026-11.io.x:c", serial="S", model="m", allow_any_host=True)
    assert sub.allocate_cntlid(None) == 1
    sub.set_cntlid_range(100, 102)
    assert [sub.allocate_cntlid(None) for _ in range(4)] == [100, 101, 102, 100]
    with pytest.raises(ValueError):
        sub.set_cntlid_range(0, 5)
