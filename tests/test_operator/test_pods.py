"""pods.py: reading why a container cannot run and how the last one ended."""

from __future__ import annotations

from typing import Any

import pytest
from kubeaccel_operator.manifests.deployment import build_deployment
from kubeaccel_operator.pods import (
    PodProblem,
    Termination,
    describe_exit,
    last_termination,
    message_tail,
    pod_problem,
)
from kubeaccel_operator.settings import Settings
from operator_samples import aid, model, shard_pod

DEPLOYMENT = build_deployment(model(), 0, aid(), Settings())


def test_the_latest_finished_container_gives_the_termination() -> None:
    def pod(state: str, finished: str, message: str, name: str = "optimize") -> dict[str, Any]:
        terminated = {"exitCode": 1, "finishedAt": finished, "message": message}
        return {
            "status": {"containerStatuses": [{"name": name, state: {"terminated": terminated}}]}
        }

    pods = [
        pod("state", "2025-01-01T00:00:01Z", "first try"),
        pod("lastState", "2025-01-01T00:00:09Z", "second try"),
        pod("state", "2030-01-01T00:00:00Z", "another container", name="sidecar"),
        {"status": {}},
    ]
    assert last_termination(pods, "optimize") == Termination(
        exit_code=1, message="second try", finished_at="2025-01-01T00:00:09Z"
    )
    assert last_termination([], "optimize") is None


@pytest.mark.parametrize(
    ("term", "text"),
    [
        (Termination(exit_code=1, reason="Error"), "exited with code 1"),
        (
            Termination(exit_code=2, reason="ContainerCannotRun"),
            "exited with code 2 (ContainerCannotRun)",
        ),
        (Termination(exit_code=137, reason="Error"), "was killed (exit code 137, SIGKILL)"),
        (Termination(exit_code=143, reason="Error"), "was killed (exit code 143, SIGTERM)"),
    ],
)
def test_an_exit_is_described_with_its_signal(term: Termination, text: str) -> None:
    assert describe_exit(term) == text


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ('{"error": "x", "reason": "ArtifactInvalid"}', "ArtifactInvalid"),
        ('{"error": "x", "reason": "not a reason"}', None),
        ('{"error": "x", "reason": 3}', None),
        ('{"error": "x"}', None),
        ("[1, 2]", None),
        ("Traceback (most recent call last):", None),
    ],
)
def test_only_a_well_formed_written_reason_is_used(message: str, reason: str | None) -> None:
    assert Termination(message=message).written_reason() == reason


def test_message_tail_prefers_the_error_of_a_json_message() -> None:
    assert (
        message_tail('{"error": "budget exceeded: top1 0.91 < 0.99"}')
        == "budget exceeded: top1 0.91 < 0.99"
    )
    assert message_tail("\n".join(str(i) for i in range(20))) == "\n".join(
        str(i) for i in range(10, 20)
    )
    assert message_tail("") == ""


def test_a_ready_starting_or_leaving_pod_has_no_problem() -> None:
    assert pod_problem(shard_pod(DEPLOYMENT, ready=True)) is None
    assert pod_problem(shard_pod(DEPLOYMENT, waiting=("ContainerCreating", ""))) is None
    assert pod_problem(shard_pod(DEPLOYMENT)) is None  # running, not ready yet: still loading
    leaving = shard_pod(DEPLOYMENT, waiting=("ErrImagePull", "x"))
    leaving["metadata"]["deletionTimestamp"] = "2025-01-02T03:04:05Z"
    assert pod_problem(leaving) is None
    evicted = shard_pod(DEPLOYMENT, waiting=("ErrImagePull", "x"))
    evicted["status"]["phase"] = "Failed"
    assert pod_problem(evicted) is None


def test_a_ready_container_after_a_crash_has_recovered() -> None:
    recovered = shard_pod(DEPLOYMENT, ready=True, last_terminated={"exitCode": 1, "message": "x"})
    assert pod_problem(recovered) is None


def test_a_clean_exit_is_not_a_crash() -> None:
    assert pod_problem(shard_pod(DEPLOYMENT, terminated={"exitCode": 0})) is None


def test_a_config_error_names_the_container_and_the_kubelets_message() -> None:
    pod = shard_pod(DEPLOYMENT, waiting=("CreateContainerConfigError", 'secret "s" not found'))
    assert pod_problem(pod) == PodProblem(
        pod["metadata"]["name"],
        "ContainerStartFailed",
        'container runtime: secret "s" not found',
        fatal=True,
    )


def test_a_crash_without_written_reason_shows_its_log_tail() -> None:
    log = "\n".join(f"line {i}" for i in range(30)) + "\nModuleNotFoundError: No module named 'x'"
    pod = shard_pod(DEPLOYMENT, terminated={"exitCode": 1, "reason": "Error", "message": log})
    problem = pod_problem(pod)
    assert problem is not None and problem.reason == "CrashLoop" and problem.fatal
    assert problem.message.startswith("container runtime exited with code 1: line 21\n")
    assert problem.message.endswith("No module named 'x'")


def test_an_init_container_failure_counts_too() -> None:
    pod = shard_pod(DEPLOYMENT)
    pod["status"]["initContainerStatuses"] = [
        {
            "name": "init",
            "image": "busybox",
            "ready": False,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}},
        }
    ]
    problem = pod_problem(pod)
    assert problem is not None and problem.reason == "ImagePullFailed"
    assert problem.message == "cannot pull image busybox: Back-off pulling"
