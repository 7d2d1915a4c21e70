"""Real crashes: ``kill -9`` of the process running a stage after a mirrored trainer checkpoint,
then the same command again (design.md §2: ``checkpoints/`` lives while a stage runs).

Each test starts the pipeline flow in a subprocess (its own process group), polls the artifact
store until the stage's checkpoint is complete there (``checkpoints/latest.json`` is written after
the checkpoint's files), SIGKILLs the whole group and reruns to completion. It measures the step
the rerun resumed from and the steps done twice (the killed run's last logged step minus that),
and checks that stages finished before the kill are reused unchanged, and that the killed stage
left no output, only its lock file and work folder, which do not block the rerun.

One store (and one Prefect server) serves the module: the SFT test publishes the stages the RL
test starts from, the RL test those of distillation; run alone, a test builds them first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults import alive_in_group

pytestmark = [pytest.mark.faults, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/smoke.yaml"
# distillation checkpoints every step of four; smoke.yaml: sft_stage1 every 10 of 30, rl_math every step
OVERRIDES = ["distill.save_steps=1", "distill.train.max_steps=4"]
ORDER = ["prepare_model", "sft_stage1", "sft_stage2", "rl_math", "rl_code", "rl_stem", "distill"]

# The flow called with keyword arguments; its result is written to argv[2].
DRIVER = """
import json, logging, sys
handler = logging.StreamHandler()
handler.setFormatter(logging.Formatter("%(asctime)s %(name)s - %(message)s"))
logging.getLogger("posttrain").addHandler(handler)
logging.getLogger("posttrain").setLevel(logging.INFO)
from flows.post_training import post_training
result = post_training(**json.loads(sys.argv[1]))
open(sys.argv[2], "w").write(json.dumps(result, default=str))
"""


class Pipeline:
    """The smoke recipe run in subprocesses against one local artifact store, cache and MLflow db."""

    def __init__(self, root: Path, api_url: str, code_version: str):
        from mlflow.tracking import MlflowClient

        self.root, self.artifacts = root, root / "artifacts"
        # one code version for every run: an edit to posttrain/ by someone else meanwhile must not
        # change the stage keys between the killed run and its rerun
        self.env = {**os.environ, "POSTTRAIN_CODE_VERSION": code_version, "POSTTRAIN_CACHE": str(root / "cache"),
                    "PREFECT_API_URL": api_url, "PREFECT_HOME": str(root / "prefect"),
                    "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns.db'}",
                    "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.published: set[str] = set()
        self.runs = 0
        # made once, before any run (it creates the database): polled, it answers within a step or two
        self.mlflow = MlflowClient(self.env["MLFLOW_TRACKING_URI"])
        self.mlflow.search_experiments()

    def start(self, only: list[str], extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path, Path]:
        """The flow on ``only`` (``extra`` overrides besides the module's) in a new session, so that its
        process group can be killed; ``(process, log, result path)``."""
        self.runs += 1
        log, out = self.root / f"run-{self.runs}.log", self.root / f"run-{self.runs}.json"
        args = {"recipe_path": RECIPE, "overrides": OVERRIDES + list(extra), "only": only,
                "artifacts": str(self.artifacts)}
        with open(log, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(args), str(out)], cwd=REPO,
                                    env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        return proc, log, out

    def run(self, only: list[str], extra: tuple[str, ...] = (), timeout: float = 300) -> dict:
        """Run the flow on ``only`` to completion; its result."""
        proc, log, out = self.start(only, extra)
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            _kill_group(proc)
        assert rc == 0, f"pipeline run failed (rc {rc}):\n{log.read_text()[-4000:]}"
        result = json.loads(out.read_text())
        if not extra:
            self.published.update(result["stages"])
        return result

    def ensure(self, stages: list[str]) -> None:
        """Publish ``stages`` (a prefix of the pipeline) unless this module already did."""
        if not set(stages) <= self.published:
            self.run(stages)

    def manifests(self, stages: list[str]) -> dict[str, bytes]:
        """Every published manifest of ``stages`` in the store, by path."""
        return {str(m.relative_to(self.artifacts)): m.read_bytes()
                for s in stages for m in sorted(self.artifacts.glob(f"stages/{s}/*/manifest.json"))}

    def kill_at_checkpoint(self, only: list[str], stage: str, name: str | None = None, at_step: int = 0,
                           extra: tuple[str, ...] = (), timeout: float = 300) -> dict:
        """Start the flow on ``only``; SIGKILL its process group once a trainer checkpoint of ``stage``
        (``name``, or any) is complete in the store and (``at_step``) the run has logged that
        training step. Returns what the store held at the kill: the stage key, the checkpoint seen,
        and the newest complete one (``latest``, its ``phase`` and trainer ``step``)."""
        proc, log, _ = self.start(only, extra)
        deadline = time.monotonic() + timeout
        pattern = f"stages/{stage}/*/checkpoints/latest.json"

        def kill_point() -> dict | None:
            found = list(self.artifacts.glob(pattern))
            latest = json.loads(found[0].read_text()) if found else None
            if latest is None or (name and latest["name"] != name) or (at_step and self.logged_step(stage) < at_step):
                return None
            return latest

        try:
            while (seen := kill_point()) is None:
                assert proc.poll() is None, f"the run ended before the kill point:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"no kill point after {timeout} s:\n{log.read_text()[-4000:]}"
                time.sleep(0.02)
        finally:
            _kill_group(proc)
        # latest.json now names the newest checkpoint complete at the kill (the one seen, or later)
        marker = next(self.artifacts.glob(pattern))
        latest = json.loads(marker.read_text())
        state = json.loads((marker.parent / latest["name"] / "trainer_state.json").read_text())
        return {"key": marker.parent.parent.name, "seen": seen["name"], "latest": latest["name"],
                "phase": latest["phase"], "step": state["global_step"]}

    def logged_step(self, stage: str) -> int:
        """The newest step at which a running MLflow run of ``stage`` logged a training loss (0: none yet)."""
        from mlflow.exceptions import MlflowException

        try:
            experiment = self.mlflow.get_experiment_by_name("posttrain-smoke")
            if experiment is None:
                return 0
            runs = self.mlflow.search_runs([experiment.experiment_id],
                                           filter_string=f"tags.stage = '{stage}' and attributes.status = 'RUNNING'")
            return max((m.step for r in runs for m in self.mlflow.get_metric_history(r.info.run_id,
                                                                                     f"train/{stage}/loss")),
                       default=0)
        except MlflowException:  # the run's process is writing the database: ask again
            return 0

    def train_steps(self, stage: str, key: str) -> dict[str, list[int]]:
        """The steps each MLflow run of ``stage`` under ``key`` logged a training loss at, in logging
        order: ``{"killed": [...], "rerun": [...]}`` (the killed run never ended: it stays RUNNING)."""
        experiment = self.mlflow.get_experiment_by_name("posttrain-smoke")
        runs = self.mlflow.search_runs([experiment.experiment_id],
                                       filter_string=f"tags.stage = '{stage}' and tags.stage_key = '{key}'")
        by_status = {r.info.status: r for r in runs}
        assert len(runs) == 2 and set(by_status) == {"RUNNING", "FINISHED"}, [(r.info.status, r.info.run_id)
                                                                                for r in runs]

        def steps(run) -> list[int]:
            history = self.mlflow.get_metric_history(run.info.run_id, f"train/{stage}/loss")
            return [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))]

        return {"killed": steps(by_status["RUNNING"]), "rerun": steps(by_status["FINISHED"])}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (its session's group); make sure none survive."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 10
    while alive_in_group(proc.pid):
        assert time.monotonic() < deadline, f"processes of group {proc.pid} survived SIGKILL"
        time.sleep(0.1)


def _kill_and_resume(pipe: Pipeline, only: list[str], stage: str, save_steps: int,
                     rerun_steps: list[int] | None = None, **kill) -> dict:
    """Kill the run of ``only`` in ``stage`` at a checkpoint (``kill``: ``Pipeline.kill_at_checkpoint``'s
    options), run it again; check the resume, return the summary, what was killed and the steps logged.

    ``rerun_steps``: the training steps the rerun must log, in order (default: from the step after
    the checkpoint it resumed from to the last).
    """
    start = time.monotonic()
    killed = pipe.kill_at_checkpoint(only, stage, **kill)
    kill_seconds = time.monotonic() - start
    folder = pipe.artifacts / "stages" / stage / killed["key"]
    # no half-written output: the stage's folder holds its checkpoints only, no manifest
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints"]
    # what the dead process left locally: its lock file (the kernel released the lock) and work folder
    cache = pipe.root / "cache"
    assert (cache / "locks" / f"{stage}-{killed['key']}.lock").is_file()
    assert (cache / "work" / stage / killed["key"]).is_dir()
    before = only[:only.index(stage)]
    manifests = pipe.manifests(before)

    start = time.monotonic()
    result = pipe.run(only, kill.get("extra", ()))
    rerun_seconds = time.monotonic() - start
    record = result["stages"][stage]
    assert not record["cached"] and record["key"] == killed["key"], "the rerun must redo the killed stage's key"
    for s in before:  # finished before the kill: reused as they were
        assert result["stages"][s]["cached"], s
        assert f"stages/{s}/{result['stages'][s]['key']}/manifest.json" in manifests, s
    assert pipe.manifests(before) == manifests
    summary = record["summary"]
    assert summary["resumed_from_step"] == killed["step"]
    # the steps done twice: those the killed run had logged past its newest complete checkpoint
    steps = pipe.train_steps(stage, killed["key"])
    done_at_kill = steps["killed"][-1]
    redone = done_at_kill - killed["step"]
    assert 0 <= redone <= save_steps, (steps, killed)
    expected = rerun_steps if rerun_steps is not None else list(range(killed["step"] + 1, summary["steps"] + 1))
    assert steps["rerun"] == expected, f"the rerun must go on from step {killed['step']}: {steps}"
    # published, the stage's mirrored checkpoints are gone, and so is the work folder
    assert (folder / "manifest.json").is_file() and not (folder / "checkpoints").exists()
    assert not (cache / "work" / stage / killed["key"]).exists()
    print(json.dumps({"stage": stage, "checkpoint_seen": killed["seen"], "latest_at_kill": killed["latest"],
                      "steps_done_at_kill": done_at_kill, "resumed_from_step": summary["resumed_from_step"],
                      "redone_steps": redone, "save_steps": save_steps, "rerun_steps": steps["rerun"],
                      "kill_run_s": round(kill_seconds, 1), "rerun_s": round(rerun_seconds, 1), "cached": before}))
    return {"summary": summary, "killed": killed, "steps": steps}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, prefect_harness) -> Pipeline:
    """One store, cache and MLflow db for the module, its runs against the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    from posttrain.pipeline import code_version

    return Pipeline(tmp_path_factory.mktemp("kill"), PREFECT_API_URL.value(), code_version())


def test_kill_sft_stage_resumes_from_its_checkpoint(pipe):
    # smoke.yaml: 30 steps, a checkpoint (and a probing snapshot) every 10; killed half-way to the
    # second one, so the rerun goes on from step 10 and redoes the steps logged since
    out = _kill_and_resume(pipe, ["prepare_model", "sft_stage1"], "sft_stage1", save_steps=10, at_step=15)
    summary = out["summary"]
    assert out["killed"]["step"] in (10, 20) and out["steps"]["killed"][-1] >= 15 and summary["steps"] == 30
    assert summary["probe_checkpoints"] == 3  # the killed run's probing snapshots were kept and reused


def test_kill_rl_phase_resumes_from_its_checkpoint(pipe):
    # smoke.yaml: accuracy 2 steps then efficiency 1, a checkpoint every step
    pipe.ensure(ORDER[:2])
    out = _kill_and_resume(pipe, ["sft_stage1", "sft_stage2", "rl_math"], "rl_math", save_steps=1,
                           rerun_steps=[2, 1], name="accuracy-checkpoint-1")
    summary, killed = out["summary"], out["killed"]
    assert killed["latest"] == "accuracy-checkpoint-1", f"killed too late: {killed}"
    assert summary["resumed_phase"] == "accuracy" and summary["accuracy_steps"] == 2
    assert summary["phases"] == "accuracy,efficiency" and summary["efficiency_steps"] == 1


def test_kill_distillation_sft_resumes_on_the_same_traces(pipe):
    pipe.ensure(ORDER[:4])
    out = _kill_and_resume(pipe, ["rl_math", "rl_code", "rl_stem", "distill"], "distill", save_steps=1)
    summary = out["summary"]
    assert summary["kept"] > 0 and summary["steps"] == 4
    # the rerun trained on the traces the killed run selected (kept beside its checkpoints), not a resample
    assert "reusing an earlier attempt's" in (pipe.root / f"run-{pipe.runs}.log").read_text()


def test_kill_after_a_finished_phase_adds_no_step(pipe):
    """Killed after the accuracy phase's last checkpoint, while efficiency trains: the rerun takes the
    accuracy phase as done (transformers would train a step past ``max_steps`` resuming from it)."""
    pipe.ensure(ORDER[:3])
    extra = ("rl_math.efficiency.train.max_steps=2",)  # a key of its own, and a longer efficiency phase
    out = _kill_and_resume(pipe, ["sft_stage2", "rl_math"], "rl_math", save_steps=1, rerun_steps=[1, 2],
                           name="accuracy-checkpoint-2", extra=extra)
    summary = out["summary"]
    assert summary["resumed_phase"] == "accuracy" and summary["resumed_from_step"] == 2
    assert summary["accuracy_steps"] == 2 and summary["efficiency_steps"] == 2


def test_resuming_from_the_last_steps_checkpoint_trains_no_further(tiny_model, tmp_path):
    """The checkpoint of a run's last step resumes as a finished run: same weights, same step count."""
    from posttrain.checkpoints import param_delta
    from posttrain.config import TrainSpec
    from posttrain.sft import train_sft

    pairs = [{"prompt": [{"role": "user", "content": f"Repeat: {i} {i}"}],
              "completion": [{"role": "assistant", "content": f"{i} {i}"}]} for i in range(6)]
    # 6 examples in batches of 4: 2 steps an epoch, so step 3 is mid-epoch (where transformers went on)
    train = TrainSpec(max_steps=3, learning_rate=1e-2, per_device_batch_size=4)
    uploaded: list[Path] = []

    def upload(folder: Path) -> None:
        shutil.copytree(folder, tmp_path / "mirror" / folder.name)
        uploaded.append(tmp_path / "mirror" / folder.name)

    first = train_sft(pairs, tiny_model, tmp_path / "first", train, 64, False, 0, [], save_steps=1, upload=upload)
    assert first["steps"] == 3 and [p.name for p in uploaded] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    again = train_sft(pairs, tiny_model, tmp_path / "again", train, 64, False, 0, [], resume_from=uploaded[-1])
    assert again["steps"] == 3
    assert param_delta(tmp_path / "first", tmp_path / "again")["max_abs"] == 0
