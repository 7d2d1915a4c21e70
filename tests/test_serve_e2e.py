"""`make serve` for real: Prefect server, MLflow server, the cpu pool, `prefect deploy` and a
worker on 127.0.0.1 (infra/serve.sh), then `prefect deployment run` as a user types it.

One module-scoped stack; the tests run in file order (the screenshot needs the run before it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("POSTTRAIN_SCREENSHOTS", REPO / ".serve-screenshots"))
pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """infra/serve.sh on free ports with its state in a temporary folder; stopped after the module."""
    root = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(SERVE_DIR=str(root / "serve"), PREFECT_PORT=str(free_port()), MLFLOW_PORT=str(free_port()),
               POSTTRAIN_ARTIFACTS=str(root / "artifacts"), POSTTRAIN_CACHE=str(root / "cache"),
               VENV=str(Path(sys.executable).parent.parent))
    done = subprocess.run(["bash", "infra/serve.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    served = dict(env)
    for line in (root / "serve" / "env").read_text().splitlines():  # what `source .serve/env` sets
        name, _, value = line.removeprefix("export ").partition("=")
        if name.isidentifier() and name != "PATH" and " " not in value:
            served[name] = value
    served["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    # The test's own Prefect client must talk to this server, also when the session-wide test
    # harness (conftest.prefect_harness) has set another API for the process.
    from prefect.settings import PREFECT_API_URL, temporary_settings

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = served["MLFLOW_TRACKING_URI"]
    try:
        with temporary_settings(updates={PREFECT_API_URL: served["PREFECT_API_URL"]}):
            yield served
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None) if saved is None else os.environ.__setitem__("MLFLOW_TRACKING_URI", saved)
        subprocess.run(["bash", "infra/stop.sh"], cwd=REPO, env=env, timeout=120)


def prefect(stack: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("prefect")), *args], cwd=REPO, env=stack,
                          capture_output=True, text=True, timeout=timeout)


def run_id_of(out: str) -> str:
    """The flow run id that `prefect deployment run` prints (``UUID: ...``)."""
    for line in out.splitlines():
        if "UUID:" in line:
            return line.split("UUID:")[1].strip()
    raise AssertionError(f"no flow run id in: {out}")


async def wait_final(flow_run_id: str, timeout: float):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"flow run {flow_run_id} still {run.state.name} after {timeout} s"
            await asyncio.sleep(3)


def smoke_recipe(**extra) -> dict:
    recipe = yaml.safe_load((REPO / "recipes" / "smoke.yaml").read_text())
    recipe.update(extra)
    return recipe


STATE: dict = {}


def test_deployment_run_of_post_training_completes(stack):
    """The smoke recipe as a validated `recipe` parameter; rl_stem placed on the cpu pool runs as
    its own flow run of deployment stage/cpu."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    params = json.dumps({"recipe": smoke_recipe(placement={"rl_stem": "cpu"})})
    started = prefect(stack, "deployment", "run", "post-training/default", "--params", params)
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = run_id_of(started.stdout)
    run = asyncio.run(wait_final(flow_run_id, timeout=1500))
    assert run.state.is_completed(), run.state

    async def read():
        async with get_client() as client:
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
            children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            artifacts = await client.read_artifacts()
            return tasks, children, artifacts

    tasks, children, artifacts = asyncio.run(read())
    names = {t.name for t in tasks}
    for stage in ("prepare_model", "sft_stage1", "sft_stage2", "rl_math", "rl_code", "distill", "instruct_rl",
                  "evaluate"):
        assert any(n.startswith(stage) for n in names), (stage, names)
    placed = [c for c in children if c.name.startswith("rl_stem-")]
    assert placed and placed[0].state.is_completed() and placed[0].deployment_id is not None
    keys = {a.key for a in artifacts if a.flow_run_id in {run.id, placed[0].id}}
    assert {"sft-stage1-summary", "sft-stage1-progress", "rl-stem-summary", "eval-table"} <= keys, keys
    progress = [a for a in artifacts if a.key == "sft-stage1-progress" and a.flow_run_id == run.id]
    assert progress and float(progress[0].data) == 100.0
    summary = next(a for a in artifacts if a.key == "sft-stage1-summary" and a.flow_run_id == run.id)
    assert f"{stack['MLFLOW_TRACKING_URI']}/#/experiments/" in summary.data  # a link to the stage's MLflow run

    client = MlflowClient(stack["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("posttrain-smoke")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.run_id != ''")
    assert parents and parents[0].info.status == "FINISHED"
    STATE["flow_run_id"] = flow_run_id


def test_recipe_typo_is_refused_before_the_run(stack):
    recipe = smoke_recipe()
    recipe["rl_math"]["grup_size"] = 4
    refused = prefect(stack, "deployment", "run", "post-training/default", "--params", json.dumps({"recipe": recipe}))
    assert refused.returncode != 0
    assert "grup_size" in refused.stdout + refused.stderr


def test_nightly_is_scheduled_one_at_a_time(stack):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState

    async def read():
        async with get_client() as client:
            dep = await client.read_deployment_by_name("post-training/nightly")
            deadline = time.monotonic() + 60
            while True:  # the scheduler service creates the upcoming runs
                runs = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type={"any_": ["SCHEDULED"]})))
                if runs or time.monotonic() > deadline:
                    return dep, runs
                await asyncio.sleep(2)

    dep, runs = asyncio.run(read())
    assert dep.schedules[0].schedule.cron == "0 2 * * *" and dep.schedules[0].schedule.timezone == "UTC"
    assert dep.global_concurrency_limit.limit == 1  # `concurrency_limit: 1` of prefect.yaml
    assert dep.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert runs and all(r.expected_start_time.hour == 2 and r.expected_start_time.minute == 0 for r in runs)


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Receiver.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_failed_nightly_run_notifies_the_webhook(stack):
    port = free_port()
    server = HTTPServer(("127.0.0.1", port), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(stack, POSTTRAIN_ALERT_WEBHOOK=f"http://127.0.0.1:{port}/alerts")
    installed = subprocess.run([sys.executable, "infra/alerts.py", "--allow-private-urls"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    started = prefect(stack, "deployment", "run", "post-training/nightly", "--param", "recipe_path=recipes/missing.yaml")
    assert started.returncode == 0, started.stdout + started.stderr
    run = asyncio.run(wait_final(run_id_of(started.stdout), timeout=300))
    assert run.state.is_failed()
    deadline = time.monotonic() + 120
    while not _Receiver.received and time.monotonic() < deadline:
        time.sleep(1)
    server.shutdown()
    assert _Receiver.received, "no notification reached the webhook"
    alert = _Receiver.received[0]
    assert alert["subject"] == "posttrain: nightly run failed" and run.name in alert["text"]


def test_flow_run_page_in_headless_chromium(stack):
    """Debian's chromium renders the Prefect UI page of the post-training flow run; the page shows
    the stages' task runs. The screenshot is kept in $POSTTRAIN_SCREENSHOTS (.serve-screenshots/)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    flow_run_id = STATE.get("flow_run_id")
    assert flow_run_id, "the deployment-run test did not complete"
    ui = stack["PREFECT_API_URL"].removesuffix("/api")
    url = f"{ui}/runs/flow-run/{flow_run_id}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "post-training-flow-run.png"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--window-size=1600,1200", "--virtual-time-budget=20000"]
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000
    for stage in ("sft_stage1", "rl_math", "instruct_rl", "evaluate"):
        assert stage in dom, f"{stage} not on {url}"
