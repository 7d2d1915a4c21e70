"""Training under ``accelerate launch`` (posttrain.launch): the spec file round trip, the command
line, side channels as refs; on two CPU processes (gloo, marked slow): one SFT step and one GRPO
step, each checked for identical parameters on both ranks and a changed saved model, an RL stage
whose metrics, checkpoints and progress cross back, and a failed launch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.config import LaunchSpec, RLStage, TrainSpec, load_recipe
from posttrain.context import StageContext
from posttrain.launch import launch_command, read_spec, write_spec
from posttrain.sinks import Ref, Sinks, build, param_digest_callback

TWO_CPU = LaunchSpec(num_processes=2, cpu=True)
PAIRS = [{"prompt": [{"role": "user", "content": f"Repeat: {s}"}], "completion": [{"role": "assistant", "content": s}]}
         for s in ("1 2 3", "4 5", "6")]


def test_spec_round_trip_keeps_types(tmp_path, data_root):
    from posttrain.data import load_mixture
    from posttrain.rl.stage import Hooks, Phase

    records = load_mixture([{"source": "synthetic_digits", "limit": 3}], str(data_root))
    stage = RLStage.model_validate({"data": [{"source": "synthetic_digits"}], "group_size": 4,
                                    "train": {"epochs": 2, "per_device_batch_size": 8}})
    hooks = Hooks(callbacks=[Ref("posttrain.sinks:param_digest_callback", {"folder": "x"})],
                  heldout=records[:1], rollouts_path=tmp_path / "r.json")
    args = {"records": records, "cfg": stage, "phase": Phase("accuracy", stage.train, 8, None),
            "model_dir": tmp_path / "m", "seed": 3, "hooks": hooks, "resume_from": None,
            "pairs": [{"prompt": [{"role": "user", "content": "hi"}], "completion": []}]}
    spec = write_spec(tmp_path / "spec", "posttrain.rl.stage:train_phase", args)
    assert sorted(p.name for p in spec.parent.iterdir()) == ["pairs.jsonl", "records.jsonl", "spec.json"]
    target, back = read_spec(spec)
    assert target == "posttrain.rl.stage:train_phase" and back == args
    assert back["cfg"].train.max_steps is None and isinstance(back["model_dir"], Path)


def test_objects_that_cannot_cross_are_named(tmp_path):
    with pytest.raises(TypeError, match=r"callbacks\[0\].*posttrain.sinks.Ref"):
        write_spec(tmp_path, "posttrain.sft:train_sft", {"callbacks": [lambda: None]})


def test_command_line_for_two_cpu_processes(tmp_path):
    cmd, env = launch_command(TWO_CPU, tmp_path / "spec.json", 29123)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--num_machines") + 1] == "1"
    assert cmd[cmd.index("--main_process_port") + 1] == "29123" and "--multi_gpu" in cmd
    assert cmd[-3:] == ["-m", "posttrain.launch", str(tmp_path / "spec.json")]
    assert env["ACCELERATE_USE_CPU"] == "true" and int(env["OMP_NUM_THREADS"]) >= 1
    cmd, _ = launch_command(LaunchSpec(num_processes=8, config_file="infra/accelerate/zero3.yaml"), tmp_path, 1)
    assert cmd[cmd.index("--config_file") + 1] == "infra/accelerate/zero3.yaml" and "--multi_gpu" not in cmd


def test_sinks_are_objects_in_process_and_refs_when_launched(tmp_path):
    from posttrain.checkpoints import RemoteCheckpoints
    from posttrain.storage import LocalStore

    class FakeTracker:
        run_id, uri = "abc", "sqlite:///x.db"

    recipe = load_recipe("recipes/smoke.yaml")
    remote = RemoteCheckpoints(LocalStore(tmp_path / "store"), "stages/s/k")
    ctx = StageContext(stage="s", recipe=recipe, out_dir=tmp_path, checkpoints=remote)
    here = Sinks(ctx)
    assert here.upload() == remote.upload and here.callbacks() == []
    launched = Sinks(StageContext(stage="s", recipe=recipe.model_copy(update={"launch": TWO_CPU}), out_dir=tmp_path,
                                  tracker=FakeTracker(), checkpoints=remote))
    assert launched.upload() == Ref("posttrain.sinks:checkpoint_uploader",
                                    {"store": str((tmp_path / "store").resolve()), "prefix": "stages/s/k"})
    assert launched.callbacks() == [Ref("posttrain.sinks:mlflow_callback",
                                        {"run_id": "abc", "uri": "sqlite:///x.db", "stage": "s"})]
    # the rebuilt uploader writes where the stage's own mirror does
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "checkpoint-1" / "a.txt").write_text("a")
    build(launched.upload())(tmp_path / "checkpoint-1", "accuracy")
    assert remote.latest(tmp_path / "back")[0] == "accuracy"


def test_progress_crosses_as_marked_stderr_lines(capsys):
    from types import SimpleNamespace

    from posttrain import sinks

    seen: list[float] = []
    sinks._PROGRESS["t0"] = seen.append
    callback = build(Ref.to(sinks.progress_relay, token="t0"))
    callback.on_step_end(None, SimpleNamespace(max_steps=4, global_step=4), None)
    line = capsys.readouterr().err
    assert line.startswith(sinks.PROGRESS_MARK)
    sinks.relay_progress(line)
    sinks.relay_progress(sinks.PROGRESS_MARK + " garbled\n")
    assert seen == [1.0] and "t0" not in sinks._PROGRESS


def test_vllm_defaults_reach_the_engine(monkeypatch, tmp_path):
    import posttrain.engines.vllm as vllm_module
    from posttrain.engines import open_engine, vllm_defaults

    seen = {}
    monkeypatch.setattr(vllm_module, "VLLMEngine", lambda model_dir, **options: seen.update(options))
    with vllm_defaults(tensor_parallel_size=4):
        open_engine("vllm", tmp_path, batch_size=8)
    assert seen == {"tensor_parallel_size": 4, "batch_size": 8}


# ---------------------------------------------------------------- two processes


def _digests(folder: Path) -> list[str]:
    reports = sorted((json.loads(p.read_text()) for p in folder.glob("rank-*.json")), key=lambda r: r["rank"])
    assert [(r["rank"], r["world_size"]) for r in reports] == [(0, 2), (1, 2)], "two ranks of one process group"
    return [r["sha256"] for r in reports]


@pytest.mark.slow
def test_sft_step_on_two_processes(tiny_model, tmp_path):
    from posttrain.checkpoints import RemoteCheckpoints, param_delta
    from posttrain.sft import train_sft
    from posttrain.storage import LocalStore
    from posttrain.tracking import Tracker

    tracker = Tracker.start_pipeline("launch-test", "run", {}, uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    store = LocalStore(tmp_path / "store")
    callbacks = [Ref.to(param_digest_callback, folder=str(tmp_path / "digests")),
                 Ref("posttrain.sinks:mlflow_callback", {"run_id": tracker.run_id, "uri": tracker.uri, "stage": "sft"})]
    upload = Ref("posttrain.sinks:checkpoint_uploader", {"store": store.root, "prefix": "s"})
    train = TrainSpec(max_steps=1, learning_rate=1e-2, per_device_batch_size=1, lr_scheduler_type="constant")
    summary = train_sft(PAIRS, tiny_model, tmp_path / "out", train, 64, False, 0, callbacks, save_steps=1,
                        upload=upload, launch=TWO_CPU)
    assert summary["steps"] == 1 and summary["examples"] == 3 and summary["param_delta_l2"] > 0
    first, second = _digests(tmp_path / "digests")
    assert first == second, "the ranks must hold identical parameters after the step"
    assert param_delta(tiny_model, tmp_path / "out")["max_abs"] > 0
    assert not (tmp_path / "out" / "checkpoints").exists()
    # metrics reached the stage's MLflow run; the checkpoint (both ranks' RNG states) reached the store
    assert "train/sft/train_loss" in tracker.client.get_run(tracker.run_id).data.metrics
    name, folder = RemoteCheckpoints(store, "s").latest(tmp_path / "resume")
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= {p.name for p in folder.iterdir()}


@pytest.mark.slow
def test_grpo_step_on_two_processes(policy, data_root, tmp_path):
    from posttrain.checkpoints import param_delta
    from posttrain.data import load_mixture
    from posttrain.rl.stage import train_grpo

    # synthetic digits: a graded reward (fraction of digits right) that varies within a group
    records = load_mixture([{"source": "synthetic_digits", "limit": 8}], str(data_root), seed=0)
    cfg = RLStage.model_validate(dict(
        data=[{"source": "synthetic_digits", "limit": 8}], group_size=4, max_completion_length=8,
        train={"max_steps": 1, "learning_rate": 1e-2, "per_device_batch_size": 8, "lr_scheduler_type": "constant"},
        filter={"enabled": False}))
    summary = train_grpo(records, cfg, policy, tmp_path / "model", seed=0,
                         callbacks=[Ref.to(param_digest_callback, folder=str(tmp_path / "digests"))], launch=TWO_CPU)
    assert summary["steps"] == 1 and summary["frac_reward_zero_std_min"] < 1.0, "the reward must vary within groups"
    first, second = _digests(tmp_path / "digests")
    assert first == second, "the ranks must hold identical parameters after the step"
    assert summary["param_delta_l2"] > 0 and param_delta(policy, tmp_path / "model")["max_abs"] > 0


@pytest.mark.slow
def test_failed_launch_names_exit_code_and_stderr(tmp_path, monkeypatch):
    import tempfile

    from posttrain.launch import run_launched

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the spec folder goes (kept on failure)
    with pytest.raises(RuntimeError) as failure:
        run_launched("posttrain.records:no_such_function", TWO_CPU, {"pairs": PAIRS})
    message = str(failure.value)
    assert "exited with code 1" in message and "last lines of its stderr" in message
    assert "error-rank0: AttributeError" in message and "no_such_function" in message.splitlines()[1]
    assert len(list(tmp_path.glob("posttrain-launch-*/pairs.jsonl"))) == 1


@pytest.mark.slow
def test_rl_stage_on_two_processes_reports_to_its_run_and_store(policy, data_root, tmp_path):
    """The stage's side channels cross as refs: step and held-out metrics reach the stage's MLflow
    run, checkpoints its store prefix (with the phase name), rollouts its folder."""
    from posttrain.checkpoints import RemoteCheckpoints
    from posttrain.rl.stage import run_rl_stage
    from posttrain.storage import LocalStore
    from posttrain.tracking import Tracker

    tracker = Tracker.start_pipeline("launch-test", "run", {}, uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    recipe = load_recipe("recipes/smoke.yaml")
    recipe = recipe.model_copy(update={"launch": TWO_CPU})
    remote = RemoteCheckpoints(LocalStore(tmp_path / "store"), "stages/rl_math/k")
    out = tmp_path / "work"
    out.mkdir()
    progress: list[float] = []
    ctx = StageContext(stage="rl_math", recipe=recipe, out_dir=out, inputs={"model": policy}, tracker=tracker,
                       data_root=str(data_root), checkpoints=remote, progress=progress.append)
    cfg = RLStage.model_validate(dict(
        data=[{"source": "synthetic_digits", "limit": 12}], group_size=4, max_completion_length=8, save_steps=1,
        eval_every=1, eval_prompts=2, train={"max_steps": 1, "learning_rate": 1e-2, "per_device_batch_size": 8},
        filter={"enabled": False}))
    summary = run_rl_stage(ctx, cfg)
    assert summary["steps"] == 1 and summary["param_delta_l2"] > 0 and summary["heldout_prompts"] == 2
    metrics = tracker.client.get_run(tracker.run_id).data.metrics
    assert "train/rl_math/reward" in metrics and "train/rl_math/heldout/avg_at_2" in metrics
    assert json.loads((tmp_path / "store" / "stages/rl_math/k/checkpoints/latest.json").read_text())["name"] == \
        "accuracy-checkpoint-1"
    assert [r["step"] for r in json.loads((out / "rollout_samples.json").read_text())] == [1, 1]
    assert progress == [1.0]
