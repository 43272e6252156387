"""The pool as SkyServe services: the rendered files (parsed by SkyPilot's own task and service parser, the vLLM
command line by vLLM's own argument parser), the plan of `sky serve` commands over every kind of change, the diff
`lifecycle verify` shows against a base ref in a real git repository, apply with a stand-in SkyServe and against
SkyPilot's real local API server (no cloud here), and the replica worker refusing changed weights."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lifecycle.engines.vllm import server_command
from lifecycle.errors import NoCloudError, UserInputError
from lifecycle.pool import diff as pool_diff
from lifecycle.pool import sky as s
from lifecycle.pool.engine import replica_spec
from lifecycle.pool.schema import Adapter, BaseWeights, Deployment, Engine, Pool, RegisteredModel, VllmArgs
from lifecycle.pool.sky_apply import SkyCommand, apply_on_sky, current_services, plan_sky, read_records

sys.path.insert(0, str(Path(__file__).parents[1] / "promote"))  # the promotion tests' real MLflow store
from promote_world import Store, cli_env, git, store  # noqa: E402

__all__ = ["store"]  # a fixture, used by the worker tests below

REPO = Path(__file__).parents[2]
BASE_DIGEST = "b" * 64


def sha(tag: str) -> str:
    return (tag * 64)[:64]


def model(version: int = 3, scheme: str = "W8A8") -> RegisteredModel:
    return RegisteredModel.model_validate(
        {
            "name": "support",
            "version": version,
            "artifact": f"file:///store/{version}/served-model",
            "manifest_digest": sha(f"{version:x}"),
            "quantization": {"scheme": scheme, "config_sha256": sha("c")},
            "recipe_sha256": sha("e"),
            "base_model": "/models/tiny",
        }
    )


def adapter(name: str, version: int = 1) -> Adapter:
    return Adapter(
        name=name,
        model=f"{name}-lora",
        version=version,
        artifact=f"file:///store/{name}/{version}",
        manifest_digest=sha(f"{version + 5:x}"),
        base_manifest_digest=sha("3"),
        recipe_sha256=sha("e"),
    )


def deployment(**changes: object) -> Deployment:
    values: dict[str, object] = {
        "name": "support-tickets",
        "model": model(),
        "engine": Engine(
            args=VllmArgs(
                max_model_len=2048,
                max_num_seqs=16,
                structured_outputs_backend="xgrammar",
                tool_call_parser="hermes",
            )
        ),
        "replicas": 2,
        "residency": "rented",
        "region": "eu-west-1",
        "gpus_per_replica": 1,
        "price_per_gpu_hour": 2.5,
    }
    values.update(changes)
    return Deployment.model_validate(values)


def parsed(text: str) -> dict[str, object]:
    data = YAML(typ="safe").load(text)
    assert isinstance(data, dict)
    return data


# ------------------------------------------------------------------------------------------------ rendering


def test_the_readiness_probe_asks_the_deployment_for_one_real_token() -> None:
    d = deployment()
    service = parsed(s.render_service(d))["service"]
    assert isinstance(service, dict)
    probe = service["readiness_probe"]
    assert probe["path"] == "/v1/completions"
    assert probe["post_data"]["model"] == "support-tickets" and probe["post_data"]["max_tokens"] == 1
    assert probe["initial_delay_seconds"] < 1200  # SkyServe's default, far too long for a small model
    assert service["replicas"] == 2
    assert service["load_balancing_policy"] == "least_load"


def test_the_replica_runs_the_worker_and_the_header_shows_the_local_engine_arguments() -> None:
    d = deployment(
        adapters=[adapter("zeta"), adapter("alpha")], engine=Engine(args=VllmArgs(max_num_seqs=16))
    )
    text = s.render_service(d)
    data = parsed(text)
    assert shlex.split(str(data["run"])) == [
        "lifecycle", "worker", "serve-replica", "--pool", "serving/pool.yaml",
        "--deployment", "support-tickets", "--port", "8000",
    ]  # fmt: skip
    assert data["envs"] == {"LIFECYCLE_DEPLOYMENT": "support-tickets", s.REPLICA_ENV: s.replica_sha256(d)}
    assert data["secrets"] == {"MLFLOW_TRACKING_URI": None}  # given at `sky serve up` time, never written
    shown = Path("/verified")
    spec = replica_spec(
        d, shown / "support-v3", {"alpha": shown / "alpha-lora-v1", "zeta": shown / "zeta-lora-v1"}
    )
    expected = server_command(spec, python=Path("python"), host="0.0.0.0", port=8000, device="gpu")
    assert f"#   {shlex.join(expected)}\n" in text
    assert expected[expected.index("--max-num-seqs") :][:2] == ["--max-num-seqs", "16"]
    assert "--lora-modules alpha=/verified/alpha-lora-v1 zeta=/verified/zeta-lora-v1" in text
    assert "--enforce-eager" not in expected  # a GPU replica


def test_rendering_is_stable_and_ignores_the_order_of_adapters() -> None:
    one = deployment(adapters=[adapter("a"), adapter("b")])
    other = deployment(adapters=[adapter("b"), adapter("a")])
    assert s.render_service(one) == s.render_service(one) == s.render_service(other)
    pool = Pool(deployments=[deployment(name="zz"), deployment(name="aa")])
    files = s.render_services(pool)
    assert list(files) == ["sky/serve/aa.yaml", "sky/serve/zz.yaml"]
    assert all(text.startswith("# SkyServe service of deployment") for text in files.values())
    assert "generated from serving/pool.yaml" in files["sky/serve/aa.yaml"]


def test_accelerators_follow_the_scheme_and_the_gpu_count() -> None:
    fp8_block = s.accelerators(deployment(model=model(scheme="FP8_BLOCK"), gpus_per_replica=2))
    assert fp8_block and set(fp8_block.values()) == {2}
    assert "A100" not in fp8_block and "H100" in fp8_block  # Ampere does not serve block FP8
    assert set(s.accelerators(deployment(model=model(scheme="W8A8")))) == set(s.SERVING_GPUS)
    with pytest.raises(UserInputError, match="serves the scheme 'W3A1'"):
        s.accelerators(deployment(model=model(scheme="W3A1")))
    cpu = parsed(s.render_service(deployment(gpus_per_replica=0, price_per_gpu_hour=0)))
    assert isinstance(cpu["resources"], dict) and "accelerators" not in cpu["resources"]
    assert "requirements-cpu.txt" in str(cpu["setup"])


def test_every_candidate_gpu_is_a_name_skypilot_knows() -> None:
    from sky.utils import gpu_names

    assert set(s.SERVING_GPUS) <= set(gpu_names.CANONICAL_GPU_NAMES)


def test_residency_decides_where_replicas_may_run() -> None:
    rented = parsed(s.render_service(deployment()))["resources"]
    home = parsed(s.render_service(deployment(residency="self_hosted", region=None)))["resources"]
    assert isinstance(rented, dict) and isinstance(home, dict)
    assert rented["infra"] == "*/eu-west-1"
    assert home["infra"] == "kubernetes"  # never a public cloud


@pytest.mark.parametrize(
    "d",
    [
        deployment(),
        deployment(residency="self_hosted", region=None, replicas=1, adapters=[adapter("tickets")]),
        deployment(model=BaseWeights(kind="base", source="/models/tiny", manifest_digest=sha("3"))),
        deployment(gpus_per_replica=0, price_per_gpu_hour=0),
    ],
    ids=["rented", "self-hosted-with-adapter", "base", "cpu"],
)
def test_skypilot_parses_the_service_file_as_a_skyserve_task(d: Deployment, tmp_path: Path) -> None:
    from sky.serve import serve_utils

    import sky

    path = tmp_path / "service.yaml"
    path.write_text(s.render_service(d))
    task = sky.Task.from_yaml(str(path))  # the schema, with "did you mean" for a typo
    serve_utils.validate_service_task(task, pool=False)  # what `sky serve up` checks before launching
    assert task.name == d.name
    assert task.service is not None
    assert task.service.min_replicas == d.replicas and task.service.max_replicas is None
    assert task.service.readiness_path == "/v1/completions"
    assert task.service.post_data == {"model": d.name, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    assert task.service.initial_delay_seconds == s.INITIAL_DELAY_S
    assert task.service.load_balancing_policy == "least_load"
    for resources in task.resources:
        assert resources.ports == ["8000"]
    accelerators = {name for r in task.resources for name in (r.accelerators or {})}
    assert accelerators == set(s.accelerators(d))
    assert task.run == shlex.join(s.serve_replica_argv(d.name))


def test_vllms_own_parser_accepts_the_rendered_command_line(serve_python: Path) -> None:
    """The flags the pool pins exist in the installed vLLM, spelled as it spells them."""
    d = deployment(
        engine=Engine(
            args=VllmArgs(
                max_model_len=2048,
                max_num_seqs=8,
                gpu_memory_utilization=0.85,
                tensor_parallel_size=2,
                structured_outputs_backend="xgrammar",
                tool_call_parser="hermes",
                max_loras=2,
            )
        ),
        adapters=[adapter("tickets")],
    )
    argv = s.vllm_command(d)
    probe = textwrap.dedent(
        """
        import json, sys
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])
        validate_parsed_serve_args(args)
        print("ARGS " + json.dumps({
            "max_num_seqs": args.max_num_seqs, "backend": args.structured_outputs_config.backend,
            "auto_tool": args.enable_auto_tool_choice, "parser": args.tool_call_parser,
            "gpu_memory_utilization": args.gpu_memory_utilization, "tp": args.tensor_parallel_size,
            "lora": args.enable_lora, "max_loras": args.max_loras, "served": args.served_model_name,
        }))
        """
    )
    done = subprocess.run(
        [str(serve_python), "-c", probe, *argv[3:]], capture_output=True, text=True, timeout=300
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("ARGS ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    assert json.loads(lines[-1][5:]) == {
        "max_num_seqs": 8,
        "backend": "xgrammar",
        "auto_tool": True,
        "parser": "hermes",
        "gpu_memory_utilization": 0.85,
        "tp": 2,
        "lora": True,
        "max_loras": 2,
        "served": ["support-tickets"],
    }


# ------------------------------------------------------------------------------------------------ the plan


VARIANTS: dict[str, dict[str, object]] = {
    "as is": {},
    "replicas": {"replicas": 5},
    "price": {"price_per_gpu_hour": 9.0},
    "version": {"model": model(version=4)},
    "scheme": {"model": model(scheme="FP8_DYNAMIC")},
    "engine": {"engine": Engine(args=VllmArgs(max_num_seqs=64))},
    "adapter added": {"adapters": [adapter("tickets")]},
    "gpus": {"gpus_per_replica": 2},
    "region": {"region": "us-east-1"},
    "residency": {"residency": "self_hosted", "region": None},
}


def expected_command(old: Deployment, new: Deployment) -> tuple[str, str | None] | None:
    """What the pool's own reconcile plan (lifecycle.pool.diff) says the change is, as a SkyServe command."""
    actions = pool_diff.diff(Pool(deployments=[old]), Pool(deployments=[new]))
    kinds = {type(a) for a in actions}
    if kinds & {pool_diff.Replace, pool_diff.LoadAdapter, pool_diff.UnloadAdapter}:
        return ("update", "blue_green")  # new replicas; SkyServe cannot hot-load adapters behind its balancer
    if pool_diff.Scale in kinds:
        return ("update", "rolling")
    return None  # nothing, or a price record only


@pytest.mark.parametrize(("before", "after"), list(itertools.product(VARIANTS, VARIANTS)))
def test_every_pair_of_states_plans_what_the_reconcile_diff_implies(before: str, after: str) -> None:
    old, new = deployment(**VARIANTS[before]), deployment(**VARIANTS[after])
    plan = plan_sky({old.name: s.render_service(old)}, Pool(deployments=[new]))
    want = expected_command(old, new)
    assert [(c.verb, c.mode) for c in plan] == ([] if want is None else [want]), plan
    if plan:
        assert plan[0].service == "support-tickets"
        assert plan[0].reason
    again = plan_sky({new.name: s.render_service(new)}, Pool(deployments=[new]))
    assert again == []  # once applied, nothing more to do


def test_new_removed_and_unrecorded_services_and_the_order_of_commands() -> None:
    keep = deployment(name="keep")
    current = {
        "gone": s.render_service(deployment(name="gone")),
        "scaled": s.render_service(deployment(name="scaled")),
        "swapped": s.render_service(deployment(name="swapped")),
        "unknown": None,
        "keep": s.render_service(keep),
    }
    desired = Pool(
        deployments=[
            keep,
            deployment(name="scaled", replicas=4),
            deployment(name="swapped", model=model(version=9)),
            deployment(name="unknown"),
            deployment(name="fresh"),
        ]
    )
    plan = plan_sky(current, desired)
    assert [(c.verb, c.service, c.mode) for c in plan] == [
        ("up", "fresh", None),
        ("update", "swapped", "blue_green"),
        ("update", "unknown", "blue_green"),
        ("update", "scaled", "rolling"),
        ("down", "gone", None),
    ]
    assert plan[0].argv("sky/serve") == [
        "sky",
        "serve",
        "up",
        "sky/serve/fresh.yaml",
        "--service-name",
        "fresh",
    ]
    assert plan[1].argv("sky/serve")[-2:] == ["--mode", "blue_green"]
    assert "service.replicas" in plan[3].reason
    assert "LIFECYCLE_REPLICA_SHA256" in plan[1].reason


def test_current_services_are_this_pools_only() -> None:
    desired = Pool(deployments=[deployment(name="a"), deployment(name="b")])
    previous = Pool(deployments=[deployment(name="c", replicas=1)])
    running = ["a", "b", "c", "someone-elses"]
    found = current_services(running, desired, {"a": "recorded text"}, previous)
    assert found == {"a": "recorded text", "b": None, "c": s.render_service(previous.deployments[0])}
    assert current_services(["c"], desired, {}, None) == {}  # not desired, not on record: left alone


# ------------------------------------------------------------------------------------------------ verify's diff


def pool_text(*deployments: Deployment) -> str:
    body = json.dumps({"deployments": [d.model_dump(mode="json") for d in deployments]}, indent=1)
    return "# a pool under test\n" + body + "\n"


def test_the_diff_against_a_base_ref_in_a_real_repository(tmp_path: Path) -> None:
    from lifecycle.cli.pool import base_services
    from lifecycle.pool.load import load_pool

    origin, work = tmp_path / "origin.git", tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    git(work, "config", "user.name", "Test Person")
    git(work, "config", "user.email", "person@example.com")
    pool = work / "serving" / "pool.yaml"
    pool.parent.mkdir()
    pool.write_text(pool_text())
    loaded = load_pool(pool)
    # no commit yet, then not in git at all: diffed against nothing
    assert base_services(pool, None)[1:] == ("nothing (no commit yet)", {})
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "empty pool")
    git(work, "remote", "add", "origin", str(origin))
    git(work, "push", "-q", "origin", "main")
    first = deployment(name="tickets", replicas=1)
    pool.write_text(pool_text(first))
    git(work, "commit", "-q", "-am", "start tickets")
    git(work, "push", "-q", "origin", "main")
    git(work, "checkout", "-q", "-b", "promote/tickets-v4")
    second = deployment(name="tickets", replicas=1, model=model(version=4))
    pool.write_text(pool_text(second, deployment(name="extra")))
    git(work, "commit", "-q", "-am", "promote tickets v4, add extra")
    loaded = load_pool(pool)

    rel, label, before = base_services(pool, None)  # the merge-base with origin/main: the pool with v3
    assert rel == "serving/pool.yaml" and label.startswith("the merge-base with origin/main")
    assert before == s.render_services(Pool(deployments=[first]))
    after = s.render_services(loaded.pool)
    text = s.diff_services(before, after)
    assert "--- a/sky/serve/tickets.yaml\n+++ b/sky/serve/tickets.yaml\n" in text
    assert f"-  {s.REPLICA_ENV}: {s.replica_sha256(first)}\n" in text
    assert f"+  {s.REPLICA_ENV}: {s.replica_sha256(second)}\n" in text
    assert "--- /dev/null\n+++ b/sky/serve/extra.yaml\n" in text
    assert s.diff_services(after, after) == ""
    removed = s.diff_services(after, before)
    assert "--- a/sky/serve/extra.yaml\n+++ /dev/null\n" in removed

    assert base_services(pool, "HEAD")[2] == after  # the branch's own commit: no change
    assert base_services(pool, "main")[2] == before
    with pytest.raises(UserInputError, match="--base no-such-ref: not a commit"):
        base_services(pool, "no-such-ref")
    git(work, "remote", "remove", "origin")  # no origin/main: against HEAD
    assert base_services(pool, None)[1].startswith("HEAD (")
    outside = tmp_path / "outside.yaml"
    outside.write_text(pool_text(first))
    assert base_services(outside, None) == (
        str(outside),
        "nothing (the pool file is not in a git repository)",
        {},
    )


def test_lifecycle_verify_prints_the_engine_command_and_the_service_diff(
    store: Store, tmp_path: Path
) -> None:
    from lifecycle.pool import pins

    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    git(work, "config", "user.name", "Test Person")
    git(work, "config", "user.email", "person@example.com")
    pool = work / "serving" / "pool.yaml"
    pool.parent.mkdir()
    v1 = deployment(
        name="support",
        model=pins.model_pin(store.versions["support v1"]),
        residency="self_hosted",
        region=None,
    )
    pool.write_text(pool_text(v1))
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "support v1")
    v2 = v1.model_copy(update={"model": pins.model_pin(store.versions["support v2"])})
    pool.write_text(pool_text(v2))

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lifecycle.cli.app", "verify", "serving/pool.yaml", *extra],
            capture_output=True,
            text=True,
            env=cli_env(store),
            cwd=work,
        )

    out = verify()
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"  support: {shlex.join(s.vllm_command(v2))}" in out.stdout
    assert "SkyServe service files, against HEAD (" in out.stdout
    assert f"-  {s.REPLICA_ENV}: {s.replica_sha256(v1)}" in out.stdout
    assert f"+  {s.REPLICA_ENV}: {s.replica_sha256(v2)}" in out.stdout
    assert "ok serving/pool.yaml: every pinned version (1) matches" in out.stdout
    bad = verify("--base", "nope")
    assert bad.returncode == 2 and "--base nope: not a commit" in bad.stderr


# ------------------------------------------------------------------------------------------------ apply


class StandInSkyServe:
    """SkyServe at the SDK's boundary, for the one thing that cannot exist here (a cloud). Every file it is given
    goes through SkyPilot's real parser and service checks, with the workdir the replica would get."""

    def __init__(self, running: Mapping[str, str] | None = None, fail_on: str | None = None):
        self.running = dict(running or {})
        self.fail_on = fail_on
        self.calls: list[tuple[str, str, str | None]] = []

    def _check(self, service_yaml: Path, workdir: Path, secrets: Mapping[str, str]) -> None:
        from sky.serve import serve_utils

        import sky

        task = sky.Task.from_yaml(str(service_yaml))
        serve_utils.validate_service_task(task, pool=False)
        assert (workdir / "serving" / "pool.yaml").is_file()
        assert set(secrets) == {"MLFLOW_TRACKING_URI"}

    def _maybe_fail(self, name: str) -> None:
        if name == self.fail_on:
            raise NoCloudError("no cloud is enabled for SkyPilot: run `sky check` ...")

    def services(self) -> dict[str, str]:
        return dict(self.running)

    def serve_up(
        self, service_yaml: Path, service_name: str, *, workdir: Path, secrets: Mapping[str, str]
    ) -> str:
        self._check(service_yaml, workdir, secrets)
        self._maybe_fail(service_name)
        self.calls.append(("up", service_name, None))
        self.running[service_name] = "READY"
        return f"http://lb/{service_name}"

    def serve_update(
        self, service_yaml: Path, service_name: str, *, mode: str, workdir: Path, secrets: Mapping[str, str]
    ) -> None:
        self._check(service_yaml, workdir, secrets)
        self._maybe_fail(service_name)
        self.calls.append(("update", service_name, mode))

    def serve_down(self, service_name: str) -> None:
        self._maybe_fail(service_name)
        self.calls.append(("down", service_name, None))
        del self.running[service_name]


def test_apply_writes_each_file_once_skyserve_took_it(tmp_path: Path) -> None:
    workdir = tmp_path / "repo"
    (workdir / "serving").mkdir(parents=True)
    (workdir / "serving" / "pool.yaml").write_text("deployments: []\n")
    sky_dir = workdir / "sky" / "serve"
    sky = StandInSkyServe()
    secrets = {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}

    def apply(pool: Pool, dry_run: bool = False) -> list[tuple[str, str, str | None]]:
        results = apply_on_sky(pool, sky_dir, dry_run=dry_run, workdir=workdir, secrets=secrets, backend=sky)
        return [(r.command.verb, r.command.service, r.command.mode) for r in results]

    one = Pool(deployments=[deployment(name="a"), deployment(name="b", residency="self_hosted", region=None)])
    assert apply(one, dry_run=True) == [("up", "a", None), ("up", "b", None)]
    assert not sky_dir.exists() and sky.calls == []  # a dry run writes and runs nothing
    assert apply(one) == [("up", "a", None), ("up", "b", None)]
    assert read_records(sky_dir) == {
        "a": s.render_service(one.deployments[0]),
        "b": s.render_service(one.deployments[1]),
    }
    assert apply(one) == []  # nothing changed
    two = Pool(deployments=[deployment(name="a", replicas=7), deployment(name="c", model=model(version=5))])
    assert apply(two) == [("up", "c", None), ("update", "a", "rolling"), ("down", "b", None)]
    assert sorted(p.name for p in sky_dir.iterdir()) == ["a.yaml", "c.yaml"]
    (sky_dir / "README.md").write_text("not a service file\n")
    sky.running["someone-elses"] = "READY"
    three = Pool(deployments=[deployment(name="a", replicas=7, model=model(version=6))])
    assert apply(three) == [("update", "a", "blue_green"), ("down", "c", None)]
    assert "someone-elses" in sky.running and (sky_dir / "README.md").exists()


def test_a_failed_command_leaves_its_record_and_later_ones_untouched(tmp_path: Path) -> None:
    workdir = tmp_path / "repo"
    (workdir / "serving").mkdir(parents=True)
    (workdir / "serving" / "pool.yaml").write_text("deployments: []\n")
    sky_dir = workdir / "sky" / "serve"
    sky = StandInSkyServe(fail_on="a")
    pool = Pool(deployments=[deployment(name="a"), deployment(name="b")])
    with pytest.raises(NoCloudError, match="run `sky check`") as first:
        apply_on_sky(
            pool, sky_dir, dry_run=False, workdir=workdir, secrets={"MLFLOW_TRACKING_URI": "x"}, backend=sky
        )
    assert "already done" not in str(first.value)
    assert not sky_dir.exists()  # nothing half-written
    sky.fail_on = "b"
    with pytest.raises(NoCloudError) as second:
        apply_on_sky(
            pool, sky_dir, dry_run=False, workdir=workdir, secrets={"MLFLOW_TRACKING_URI": "x"}, backend=sky
        )
    assert "already done and recorded" in str(second.value)
    assert f"sky serve up {sky_dir}/a.yaml --service-name a" in str(second.value)
    assert list(read_records(sky_dir)) == ["a"]


API_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from lifecycle.errors import LifecycleError
    from lifecycle.pool.load import load_pool
    from lifecycle.pool.sky_apply import apply_on_sky

    workdir, sky_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out = {}
    try:
        pool = load_pool(workdir / "serving" / "pool.yaml").pool
        try:
            apply_on_sky(pool, sky_dir, dry_run=False, workdir=workdir, secrets={"MLFLOW_TRACKING_URI": "x"})
            out = {"error": None}
        except LifecycleError as exc:
            out = {"error": type(exc).__name__, "message": str(exc)}
    finally:
        import sky
        sky.api_stop()
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_apply_on_sky_without_a_cloud_ends_in_the_launchers_no_cloud_error(tmp_path: Path) -> None:
    """SkyPilot's real local API server, in its own runtime directory and port (see tests/launch/
    test_sky_api_server.py). This machine has no internet, and SkyServe asks for it before anything else (`sky
    serve status` checks the network first): one line saying so and to run `sky check`, nothing written."""
    workdir = tmp_path / "repo"
    (workdir / "serving").mkdir(parents=True)
    (workdir / "serving" / "pool.yaml").write_text(pool_text(deployment(name="tickets")))
    sky_dir = workdir / "sky" / "serve"
    runtime = tmp_path / "sky-runtime"
    runtime.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "SKY_RUNTIME_DIR": str(runtime),
        "SKYPILOT_API_SERVER_LOCAL_PORT": str(port),
        "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
    }
    env.pop("SKYPILOT_API_SERVER_ENDPOINT", None)
    done = subprocess.run(
        [sys.executable, "-c", API_SCRIPT, str(workdir), str(sky_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT ") :])
    print(json.dumps(got, indent=1))
    assert got["error"] == "NoCloudError", got
    assert got["message"].startswith("SkyPilot cannot reach the internet from this machine")
    assert got["message"].endswith("run `sky check`") and "\n" not in got["message"]
    assert not sky_dir.exists()


def test_sky_command_descriptions_read_as_skypilot_commands() -> None:
    command = SkyCommand("update", "tickets", "blue_green", "weights changed")
    assert (
        command.describe()
        == "sky serve update tickets sky/serve/tickets.yaml --mode blue_green  (weights changed)"
    )
    assert SkyCommand("down", "tickets").argv("x") == ["sky", "serve", "down", "tickets"]


# ------------------------------------------------------------------------------------------------ the replica


FAKE_PYTHON = """#!/bin/bash
# The serving environment's python, standing in for vLLM: answers the engine-kind probe, records the exec.
if [ "$1" = "-c" ]; then echo cpu; exit 0; fi
printf '%s\\n' "$@" > "$(dirname "$0")/exec-args.txt"
echo "vllm would start"
"""


def replica(
    store: Store, tmp_path: Path, key: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    from lifecycle.pool import pins

    pin = pins.model_pin(store.versions[key])
    d = deployment(name="support", model=pin, residency="self_hosted", region=None, gpus_per_replica=0)
    pool = tmp_path / "pool.yaml"
    pool.write_text(pool_text(d))
    python = tmp_path / "serve-python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle.cli.app", "worker", "serve-replica", "--pool", str(pool),
         "--deployment", "support", "--port", "8123"],
        capture_output=True,
        text=True,
        env=cli_env(store, LIFECYCLE_SERVE_PYTHON=str(python), LIFECYCLE_HOME=str(tmp_path / "home"), **env),
        cwd=tmp_path,
    )  # fmt: skip
    return done, tmp_path / "exec-args.txt"


def test_serve_replica_execs_vllm_with_the_local_engine_arguments(store: Store, tmp_path: Path) -> None:
    from lifecycle.pool import pins
    from lifecycle.pool.verify import local_folder

    done, exec_args = replica(store, tmp_path, "support v1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "vllm would start" in done.stdout
    pin = pins.model_pin(store.versions["support v1"])
    folder = local_folder(pin.artifact)
    assert folder is not None
    d = deployment(name="support", model=pin, residency="self_hosted", region=None, gpus_per_replica=0)
    expected = server_command(
        replica_spec(d, folder, {}), python=tmp_path / "serve-python", host="0.0.0.0", port=8123, device="cpu"
    )
    assert exec_args.read_text().splitlines() == expected[1:]


def test_serve_replica_refuses_weights_whose_bytes_changed(store: Store, tmp_path: Path) -> None:
    done, exec_args = replica(store, tmp_path, "flipped v1")
    assert done.returncode == 1
    assert "does not match its manifest, so it cannot be served" in done.stderr
    assert "Traceback" not in done.stderr
    assert not exec_args.exists()  # vLLM never started


def test_serve_replica_refuses_a_pool_file_other_than_its_service_was_rendered_for(
    store: Store, tmp_path: Path
) -> None:
    done, exec_args = replica(store, tmp_path, "support v1", LIFECYCLE_REPLICA_SHA256="0" * 64)
    assert done.returncode == 1
    assert "the workdir and the service file disagree" in done.stderr
    assert not exec_args.exists()


def test_serve_replica_names_the_deployments_when_one_is_unknown(store: Store, tmp_path: Path) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text(pool_text(deployment(name="other")))
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle.cli.app", "worker", "serve-replica", "--pool", str(pool),
         "--deployment", "support"],
        capture_output=True,
        text=True,
        env=cli_env(store),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "no deployment 'support' (deployments: other)" in done.stderr
