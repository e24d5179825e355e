"""Shadow and canary routing on shard 0, with real `kubeaccel serve` processes on loopback.

A serving chain and a candidate chain run as separate processes. Every answer a client
gets must come from the serving chain in shadow mode (model_version tells the chains
apart), and no candidate failure may ever reach the client.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from kubeaccel_api.routing import Routing, RoutingMode, RoutingReport
from kubeaccel_runtime.client import InferenceClient
from kubeaccel_runtime.serve.cli import routing_source
from kubeaccel_runtime.serve.routing import (
    Router,
    RoutingSource,
    Sampler,
    ShadowStats,
    read_routing,
)
from kubeaccel_runtime.serve.session import load_shard
from serve_fixtures import CPU1, MLP_INPUTS, Proc, build_mlp, spec_for, wait_until, write_artifact

RNG = np.random.default_rng(7)
XS = [RNG.uniform(-3, 3, size=(2, 4)).astype(np.float32) for _ in range(24)]


def _artifact(root: Path, seed: int, tag: int) -> Path:
    """The MLP of `seed`; `tag` only changes the artifact id (so model_version differs)."""
    spec = spec_for(MLP_INPUTS)
    spec["optimization"]["validation"] = {"seed": tag}
    return write_artifact(root / f"m{seed}-{tag}", build_mlp(seed=seed), spec, name="mlp")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("routing")
    return {
        "serving": _artifact(root, 0, 0),
        "same": _artifact(root, 0, 1),  # same weights, another artifact id
        "perturbed": _artifact(root, 1, 2),  # other weights: outputs differ
    }


def ready(proc_factory: type[Proc], artifact: Path, *flags: str) -> Proc:
    """A `kubeaccel serve` process of `artifact`, once it reports ready."""
    proc = proc_factory(artifact, *flags)
    proc.wait_for("/v2/health/ready", 200)
    return proc


def version(artifact: Path) -> str:
    return artifact.name


def report(p: Proc) -> RoutingReport:
    r = p.get("/v2/rollout")
    assert r is not None and r.status_code == 200, r
    return RoutingReport.model_validate(r.json())


def send_all(p: Proc) -> list[Any]:
    """Every request of XS; returns the results (raises on any client-visible error)."""
    with InferenceClient(p.url) as cli:
        return [cli.infer("mlp", {"x": x}) for x in XS]


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a stuck candidate)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(srv.getsockname()[1])
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    srv.close()


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("percent", "taken"), [(10, 10), (100, 100), (25, 25), (33.3, 33), (0, 0)])
def test_the_sampler_takes_an_even_share(percent: float, taken: int) -> None:
    sampler = Sampler(percent)
    picks = [sampler.take() for _ in range(100)]
    assert sum(picks) == taken
    if percent == 10:
        assert [i for i, p in enumerate(picks) if p] == list(range(9, 100, 10))


def test_a_comparison_adds_up_like_the_accuracy_gate() -> None:
    stats = ShadowStats()
    ref = np.array([[1.0, 3.0], [2.0, 0.5]], np.float32)
    got = np.array([[1.5, 3.0], [0.0, 0.5]], np.float32)
    assert stats.compare({"y": ref}, {"y": got}, ["y"], "y") is None
    assert stats.compare({"y": ref}, {"y": ref}, ["y"], "y") is None
    counters = stats.counters()
    assert counters.compared == 2
    assert counters.max_abs_diff() == 2.0
    assert counters.mean_rel_error() == pytest.approx(2.5 / 13.0)
    assert (counters.top1_compared, counters.top1_agreed) == (4, 3)


def test_an_output_of_another_shape_is_not_comparable() -> None:
    stats = ShadowStats()
    problem = stats.compare({"y": np.zeros((2, 3))}, {"y": np.zeros((2, 4))}, ["y"], "y")
    assert problem is not None and "shape" in problem
    assert stats.compare({"y": np.zeros((2, 3))}, {}, ["y"], "y") == (
        "the candidate returned no output 'y'"
    )
    assert stats.compared == 0


def test_a_routing_file_is_read_or_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    assert read_routing(path).mode is RoutingMode.OFF  # not there yet: no routing
    path.write_text("")
    assert read_routing(path).mode is RoutingMode.OFF
    path.write_text("{not json")
    with pytest.raises(ValueError, match=str(path)):
        read_routing(path)
    path.write_text(json.dumps({"id": "r1", "mode": "shadow", "percent": 10}))
    with pytest.raises(ValueError, match="candidateUrl"):
        read_routing(path)


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((1, "a", None, "http://c", 10.0, None), "shard 0 only"),
        ((0, "a", Path("r.json"), "http://c", 10.0, None), "excludes"),
        ((0, "a", None, "http://c", 10.0, 20.0), "exclude each other"),
        ((0, "a", None, "http://c", None, None), "needs --mirror-percent"),
        ((0, "a", None, None, 10.0, None), "needs --mirror-percent"),
        ((0, "a", None, "ftp://c", 10.0, None), "should match pattern"),
    ],
)
def test_contradictory_routing_options_are_refused(args: tuple[Any, ...], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        routing_source(*args)


def test_routing_options_build_a_fixed_routing_or_none() -> None:
    assert routing_source(0, "a", None, None, None, None) is None
    source = routing_source(0, "b", None, "http://c:1", None, 25.0)
    assert source is not None and source.fixed is not None
    assert (source.fixed.mode, source.fixed.percent, source.chain) == (
        RoutingMode.CANARY,
        25.0,
        "b",
    )


# --------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_shadow_answers_from_the_serving_chain_and_compares_every_mirrored_request(
    artifacts: dict[str, Path], proc_factory: type[Proc]
) -> None:
    cand = ready(proc_factory, artifacts["same"])
    p = ready(
        proc_factory, artifacts["serving"], "--candidate", cand.url, "--mirror-percent", "100"
    )
    served = send_all(p)
    assert {r.model_version for r in served} == {version(artifacts["serving"])}
    got = wait_until(lambda: (r := report(p)).shadow.compared == len(XS) and r, "comparisons")
    assert got.mode is RoutingMode.SHADOW and got.shadow.mirrored == len(XS)
    assert got.shadow.errors == 0
    assert got.shadow.max_abs_diff() == 0.0
    assert got.shadow.top1_agreement() == 1.0
    assert got.candidate.requests == len(XS) and got.candidate.errors == 0


@pytest.mark.slow
def test_shadow_measures_a_perturbed_candidate_without_changing_any_answer(
    artifacts: dict[str, Path], proc_factory: type[Proc]
) -> None:
    reference = load_shard(artifacts["serving"], 0, config=CPU1)
    cand = ready(proc_factory, artifacts["perturbed"])
    p = ready(proc_factory, artifacts["serving"], "--candidate", cand.url, "--mirror-percent", "50")
    served = send_all(p)
    for x, answer in zip(XS, served, strict=True):
        np.testing.assert_array_equal(answer.outputs["y"], reference.run({"x": x})["y"])
    got = wait_until(lambda: (r := report(p)).shadow.compared == len(XS) // 2 and r, "compared")
    assert got.shadow.mirrored == len(XS) // 2
    assert got.shadow.max_abs_diff() > 0.1
    agreement = got.shadow.top1_agreement()
    assert agreement is not None and agreement < 1.0
    assert got.shadow.top1_compared == len(XS)  # 12 requests x 2 rows


@pytest.mark.slow
def test_a_dead_candidate_is_counted_and_never_seen_by_clients(
    artifacts: dict[str, Path], proc_factory: type[Proc]
) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    p = ready(proc_factory, artifacts["serving"], "--candidate", dead, "--mirror-percent", "100")
    send_all(p)  # raises on any non-200
    got = wait_until(lambda: (r := report(p)).shadow.errors == len(XS) and r, "mirror errors")
    assert got.shadow.compared == 0


@pytest.mark.slow
def test_mirrors_never_hold_up_answers_and_are_skipped_beyond_the_bound(
    artifacts: dict[str, Path], proc_factory: type[Proc], hanging_port: int
) -> None:
    stuck = f"http://127.0.0.1:{hanging_port}"
    p = ready(proc_factory, artifacts["serving"], "--candidate", stuck, "--mirror-percent", "100")
    with InferenceClient(p.url) as cli:
        for _ in range(80):
            assert cli.infer("mlp", {"x": XS[0]}).model_version == version(artifacts["serving"])
    got = report(p)
    # Every answer came back while the first 64 mirrors were still waiting on the candidate.
    assert (got.shadow.mirrored, got.shadow.skipped) == (64, 16)
    assert got.shadow.compared == got.shadow.errors == 0


@pytest.mark.slow
def test_canary_answers_its_share_from_the_candidate_and_falls_back_when_it_fails(
    artifacts: dict[str, Path], proc_factory: type[Proc]
) -> None:
    cand = ready(proc_factory, artifacts["same"])
    p = ready(proc_factory, artifacts["serving"], "--candidate", cand.url, "--canary-percent", "25")
    versions = [r.model_version for r in send_all(p)]
    assert versions.count(version(artifacts["same"])) == len(XS) // 4
    assert versions.count(version(artifacts["serving"])) == len(XS) - len(XS) // 4
    got = report(p)
    assert (got.candidate.requests, got.serving.requests) == (len(XS) // 4, len(XS) * 3 // 4)
    assert got.candidate.errors == got.serving.errors == 0
    assert got.candidate.p50_ms() is not None and got.serving.p50_ms() is not None

    cand.stop()
    versions = [r.model_version for r in send_all(p)]
    assert set(versions) == {version(artifacts["serving"])}  # every answer, none failed
    got = report(p)
    assert got.candidate.errors == len(XS) // 4
    assert got.serving.requests == len(XS) * 3 // 4 + len(XS)


@pytest.mark.slow
def test_the_routing_file_is_followed_as_it_changes(
    artifacts: dict[str, Path], proc_factory: type[Proc], tmp_path: Path
) -> None:
    cand = ready(proc_factory, artifacts["same"])
    path = tmp_path / "routing.json"
    p = ready(proc_factory, artifacts["serving"], "--routing-file", str(path), "--chain", "a")
    assert report(p).mode is RoutingMode.OFF  # no file yet

    def write(routing: Routing) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(routing.to_wire()))
        tmp.replace(path)  # atomic, as the kubelet swaps ConfigMap files

    shadow = Routing(id="r1", mode="shadow", chain="a", candidate_url=cand.url, percent=100)
    write(shadow)
    wait_until(lambda: report(p).mode is RoutingMode.SHADOW, "routing applied")
    send_all(p)
    wait_until(lambda: report(p).shadow.compared == len(XS), "comparisons under r1")

    # Another chain's routing is not this server's business.
    write(shadow.model_copy(update={"id": "r2", "chain": "b"}))
    wait_until(lambda: report(p).id == "r2", "r2 read")
    assert report(p).mode is RoutingMode.OFF and report(p).shadow.compared == 0
    send_all(p)
    assert report(p).shadow.mirrored == 0

    # A broken file is reported and changes nothing.
    write(shadow.model_copy(update={"id": "r3"}))
    wait_until(lambda: report(p).mode is RoutingMode.SHADOW, "r3 applied")
    path.write_text('{"mode": "canary"')
    wait_until(lambda: report(p).problem is not None, "the problem reported")
    got = report(p)
    assert got.id == "r3" and got.mode is RoutingMode.SHADOW
    assert str(path) in (got.problem or "")


async def test_a_server_that_does_not_route_says_so(mlp_model: Any, app_factory: Any) -> None:
    transport = httpx.ASGITransport(app=app_factory(mlp_model))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/v2/rollout")
    assert r.status_code == 404 and "does not route" in r.json()["error"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_new_rollout_to_the_same_url_opens_new_connections() -> None:
    # The same chain's shard-0 Service name is the candidate URL of every rollout into that
    # chain; between two rollouts its Service and pods were replaced.
    router = Router(RoutingSource(chain="a"), "mlp", None)
    url = "http://mlp-shard-0.ml.svc:8080"
    router._apply(Routing(id="r1", mode="shadow", chain="a", candidate_url=url, percent=100))
    first = router._client
    router._apply(Routing(id="r1", mode="shadow", chain="a", candidate_url=url, percent=50))
    assert router._client is first  # the same rollout keeps its pool
    router._apply(Routing(id="r2", mode="canary", chain="a", candidate_url=url, percent=25))
    assert router._client is not None and router._client is not first
    await router.aclose()
