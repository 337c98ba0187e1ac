"""Volume listings and the exported-volume view build their lineage and export indexes once per
call, and the service finds volumes by uuid through an index of its own: what they show must
stay exactly what asking each volume shows (``Volume.info()``, the store's own description),
through snapshots, clones, renames, deletions and re-creations."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sbstore.control.service import ControlService
from sbstore.control.state import StateStore
from sbstore.store import Pool
from target.server import TargetServer
from target.subsystem import Target
from tests.control.conftest import NQN_1, NQN_2
from tests.loop_turns import turns_while

STORE_FIELDS = ("name", "id", "uuid", "kind", "size_bytes", "block_size", "allocated_bytes",
                "parent", "children", "created")


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[ControlService]:
    pools = {"p1": Pool.create(tmp_path / "p1.pool", 256 << 20),
             "p2": Pool.create(tmp_path / "p2.pool", 256 << 20)}
    state = StateStore(tmp_path / "state.db")
    target = Target()
    server = TargetServer(target)
    service = ControlService(state, pools, target, server)
    await service.restore()
    try:
        yield service
    finally:
        await service.close()
        await server.close()
        for pool in pools.values():
            await pool.aclose()
        state.close()


def check_listing(svc: ControlService) -> list[dict[str, Any]]:
    """Every listed volume is what its pool and the service say of it one at a time."""
    listed = svc.list_volumes()
    assert [(v["pool"], v["id"]) for v in listed] == \
        [(p, v.id) for p, pool in sorted(svc.pools.items()) for v in pool.volumes]
    for entry in listed:
        vol = svc.pools[entry["pool"]].volume(entry["name"])
        assert {k: entry[k] for k in STORE_FIELDS} == vol.info()
        assert svc.show_volume(entry["name"], entry["pool"]) == entry
    return listed


async def test_listing_matches_each_volume_through_lineage_and_exports(
        svc: ControlService) -> None:
    await svc.create_tenant("gold")
    await svc.create_volume("a", 8 << 20, pool="p1", tenant="gold")
    await svc.create_snapshot("a", "a-s1", pool="p1")
    await svc.create_snapshot("a", "a-s2", pool="p1")  # a chain: a-s1 <- a-s2 <- a
    await svc.create_clone("a-s1", "c1", pool="p1")
    await svc.create_clone("a-s1", "c2", pool="p1", tenant="default")
    await svc.create_volume("a", 4 << 20, pool="p2")  # the same name in another pool
    await svc.create_volume("b", 4 << 20, pool="p2")
    await svc.create_export(NQN_2, volumes=["a", "b"], pool="p2", allow_any_host=True)
    await svc.create_export(NQN_1, volumes=["a", "c1"], pool="p1", allow_any_host=True)
    await svc.add_namespace(NQN_2, "a-s2", pool="p1")
    listed = check_listing(svc)

    by = {(v["pool"], v["name"]): v for v in listed}
    assert by[("p1", "a-s1")]["children"] == ["a-s2", "c1", "c2"]
    assert by[("p1", "a")]["parent"] == "a-s2"
    assert by[("p1", "a")]["exports"] == [{"nqn": NQN_1, "nsid": 1}]
    assert by[("p1", "a-s2")]["exports"] == [{"nqn": NQN_2, "nsid": 3}]
    assert by[("p2", "a")]["exports"] == [{"nqn": NQN_2, "nsid": 1}]
    assert by[("p1", "c1")]["tenant"] == "gold" and by[("p1", "c2")]["tenant"] == "default"

    assert [v["name"] for v in svc.list_volumes(tenant="gold")] == \
        ["a", "a-s1", "a-s2", "c1"]
    assert [v["name"] for v in svc.list_volumes(kind="snapshot")] == ["a-s1", "a-s2"]
    assert [v["name"] for v in svc.list_volumes(pool="p2", kind="volume")] == ["a", "b"]

    # Deletions, renames and re-creations: the uuid index follows them.
    await svc.delete_volume("c2", pool="p1")
    await svc.rename_volume("c1", "c1-renamed", pool="p1")
    await svc.delete_volume("b", pool="p2", force=True)
    await svc.create_volume("b", 4 << 20, pool="p2")
    await svc.add_namespace(NQN_2, "b", pool="p2")
    listed = check_listing(svc)
    assert [e["volume"] for e in svc.show_export(NQN_2)["namespaces"]] == ["a", "b", "a-s2"]
    assert {(p, v.name) for p, v, _, _ in svc.exported_volumes()} == {
        ("p1", "a"), ("p1", "c1-renamed"), ("p2", "a"), ("p2", "b"), ("p1", "a-s2")}
    assert {v["name"] for v in listed if v["pool"] == "p1"} == \
        {"a", "a-s1", "a-s2", "c1-renamed"}
    assert svc.tenant_info("gold")["volumes"] == ["p1/a", "p1/a-s1", "p1/a-s2",
                                                  "p1/c1-renamed"]


async def test_exported_volumes_are_counted_once_with_their_tenant(svc: ControlService) -> None:
    await svc.create_tenant("gold")
    await svc.create_volume("v", 4 << 20, pool="p1", tenant="gold")
    await svc.create_export(NQN_1, volumes=["v"], pool="p1", allow_any_host=True)
    await svc.create_export(NQN_2, volumes=["v"], pool="p1", allow_any_host=True)
    seen = svc.exported_volumes()
    assert [(p, v.name, t) for p, v, t, _ in seen] == [("p1", "v", "gold")]
    await svc.set_volume("v", pool="p1", tenant="default")
    assert [t for _, _, t, _ in svc.exported_volumes()] == ["default"]


async def test_a_volume_gone_from_its_pool_is_not_found_through_the_index(
        svc: ControlService) -> None:
    """The uuid index is checked against the pool at each use: a volume the pool lost behind
    the service's back (a repair, a bug) shows as missing, not as the object it was."""
    await svc.create_volume("v", 4 << 20, pool="p1")
    await svc.create_volume("w", 4 << 20, pool="p1")
    await svc.create_export(NQN_1, volumes=["v", "w"], pool="p1", allow_any_host=True)
    assert len(svc.exported_volumes()) == 2
    pool = svc.pools["p1"]
    await pool.delete(pool.volume("v"))
    assert [v.name for _, v, _, _ in svc.exported_volumes()] == ["w"]
    assert [ns["volume"] for ns in svc.show_export(NQN_1)["namespaces"]] == [None, "w"]


async def test_a_sliced_scrape_survives_exports_changing_under_it(svc: ControlService) -> None:
    """The exposition walks iter_exported_volumes() across slices, letting the loop run API
    calls in between: exports deleted and created meanwhile must not break it, and the next
    scrape shows exactly the new state."""
    import asyncio

    from prometheus_client.parser import text_string_to_metric_families

    from sbstore.metrics import Exposition, MetricsSource, VolumeSample

    for i in range(40):
        await svc.create_volume(f"v{i}", 1 << 20, pool="p1")
        await svc.create_export(f"{NQN_1}-{i}", volumes=[f"v{i}"], pool="p1",
                                allow_any_host=True)
    source = MetricsSource(volumes=lambda: (
        VolumeSample(p, v.name, t, s, v.size_bytes)
        for p, v, t, s in svc.iter_exported_volumes()))
    exposition = Exposition(source, standard_collectors=False, slice_s=0.0)

    async def meddle() -> None:
        for i in range(0, 40, 4):
            await svc.delete_export(f"{NQN_1}-{i}", force=True)
            await svc.delete_volume(f"v{i + 1}", pool="p1", force=True)
            await svc.create_volume(f"w{i}", 1 << 20, pool="p1")
            await svc.create_export(f"{NQN_2}-{i}", volumes=[f"w{i}"], pool="p1",
                                    allow_any_host=True)

    task = asyncio.ensure_future(meddle())
    while not task.done():
        await exposition.render()
    await task
    assert exposition.slices > 1

    def volumes(text: bytes) -> set[str]:
        return {s.labels["volume"] for f in text_string_to_metric_families(text.decode())
                for s in f.samples if s.name == "sbstore_volume_reads_total"}

    got = b"".join(await exposition.render())
    assert got == Exposition(source, standard_collectors=False).render_now()
    assert volumes(got) == {v.name for _, v, _, _ in svc.exported_volumes()}
    assert "w0" in volumes(got) and "v0" not in volumes(got) and "v1" not in volumes(got)


async def test_the_api_listing_yields_to_the_loop_and_lists_the_same(
        svc: ControlService, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from sbstore.control import service as service_mod
    from sbstore.control.http import json_response, json_response_sliced

    for i in range(150):
        await svc.create_volume(f"v{i:03d}", 1 << 20, pool="p1")
    await svc.create_snapshot("v000", "s", pool="p1")
    monkeypatch.setattr(service_mod, "LIST_SLICE_S", 0.0)
    listed, during = await turns_while(svc.list_volumes_sliced())
    response, during_json = await turns_while(json_response_sliced(200, listed))
    assert listed == svc.list_volumes() and len(listed) == 151
    assert during >= 151 // 32 and during_json >= 1
    assert json.loads(response.body) == listed == json.loads(json_response(200, listed).body)
    assert await svc.list_volumes_sliced(kind="snapshot") == svc.list_volumes(kind="snapshot")
    with pytest.raises(Exception, match="kind"):
        await svc.list_volumes_sliced(kind="other")


async def test_the_export_listing_yields_to_the_loop_and_shows_each_export(
        svc: ControlService, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /v1/subsystems lists what showing each export shows, host keys included (read once
    for all exports), and yields to the loop while it does."""
    from sbstore.control import dhchap
    from sbstore.control import service as service_mod

    for i in range(70):
        await svc.create_volume(f"v{i:03d}", 1 << 20, pool="p1")
        await svc.create_export(f"{NQN_1}-{i:03d}", volumes=[f"v{i:03d}"])
    host = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001"
    for i in (3, 40):  # two exports with a DH-HMAC-CHAP host, the others without
        await svc.add_host(f"{NQN_1}-{i:03d}", host,
                           dhchap.parse_request({"generate_key": True}))
    monkeypatch.setattr(service_mod, "LIST_SLICE_S", 0.0)
    listed, during = await turns_while(svc.list_exports_sliced())
    assert during >= 70 // 32
    assert listed == svc.list_exports() == [svc.show_export(e["nqn"]) for e in listed]
    assert [e["nqn"] for e in listed] == sorted(f"{NQN_1}-{i:03d}" for i in range(70))
    keyed = [e["nqn"] for e in listed if e["host_auth"]]
    assert keyed == [f"{NQN_1}-003", f"{NQN_1}-040"]
    assert set(listed[3]["host_auth"]) == {host}


async def test_the_collector_is_off_while_an_api_listing_lives(
        svc: ControlService, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /v1/volumes through the API: the collector stays off from the handler to the
    encoded answer (what it builds would otherwise reach the oldest generation and set off a
    full collection), and is on again after."""
    import asyncio
    import gc

    from sbstore.control import service as service_mod
    from sbstore.control.api import Api
    from sbstore.control.http import Request

    for i in range(300):  # more than JSON_SLICE_ITEMS: the encoding yields too
        await svc.create_volume(f"v{i:03d}", 1 << 20, pool="p1")
    monkeypatch.setattr(service_mod, "LIST_SLICE_S", 0.0)
    seen: list[bool] = []
    done = False

    async def watch() -> None:
        while not done:
            seen.append(gc.isenabled())
            await asyncio.sleep(0)

    task = asyncio.ensure_future(watch())
    await asyncio.sleep(0)
    try:
        response = await Api(svc).handle(Request("GET", "/v1/volumes", "/v1/volumes", {},
                                                 (1, 1), {}))
    finally:
        done = True
        await task
    assert response.status == 200 and response.body.count(b'"name"') >= 300
    assert len(seen) > 4 and not any(seen[1:-1])  # the listing yielded, the collector off
    assert gc.isenabled()
