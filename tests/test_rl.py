"""RL stage on a tiny model: MGPO changes the update, lambda = 0 is TRL's GRPO, filtering, resume."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.checkpoints import RemoteCheckpoints
from posttrain.config import RLStage, load_recipe
from posttrain.context import StageContext
from posttrain.data import load_mixture
from posttrain.records import Record
from posttrain.rl.filtering import filter_prompts, split_by_pass_rate
from posttrain.storage import LocalStore

from faults import Killed, KillAfter

pytestmark = pytest.mark.slow


def _records(data_root, n=8) -> list[Record]:
    # synthetic digits: a graded reward (fraction of digits right) that varies within a group
    return load_mixture([{"source": "synthetic_digits", "limit": n}], str(data_root), seed=0)


def _stage(**overrides) -> RLStage:
    base = dict(data=[{"source": "synthetic_digits", "limit": 8}], group_size=4, max_completion_length=8,
                train={"max_steps": 1, "learning_rate": 1e-2, "per_device_batch_size": 8, "lr_scheduler_type": "constant"},
                filter={"enabled": False})
    base.update(overrides)
    return RLStage.model_validate(base)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_one_step(trainer_cls, model_dir, records, tmp_path, **kwargs) -> dict[str, torch.Tensor]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.rewards import verifier_reward
    from posttrain.rl.stage import rl_rows
    from posttrain.trl_args import grpo_config

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    args = grpo_config(_stage(), tmp_path / "out", seed=0, use_vllm=False)
    trainer = trainer_cls(model=model, reward_funcs=[verifier_reward], args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(rl_rows(records)), **kwargs)
    trainer.train()
    history = [h for h in trainer.state.log_history if "reward_std" in h]
    assert history and history[0]["reward_std"] > 0, "the reward must vary within groups"
    return _weights(trainer.model), history[0]


def test_mgpo_step_moves_weights_and_lambda_zero_is_plain_grpo(policy, data_root, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    from posttrain.rl.trainer import MGPOTrainer

    records = _records(data_root)
    start = _weights(AutoModelForCausalLM.from_pretrained(str(policy)))
    plain, _ = _train_one_step(GRPOTrainer, policy, records, tmp_path / "plain")
    lam0, _ = _train_one_step(MGPOTrainer, policy, records, tmp_path / "lam0", mgpo_lambda=0.0)
    mgpo, logs = _train_one_step(MGPOTrainer, policy, records, tmp_path / "mgpo", mgpo_lambda=4.0)
    assert all(torch.equal(plain[k], lam0[k]) for k in plain), "lambda = 0 must reproduce TRL's GRPO update"
    assert any(not torch.equal(start[k], mgpo[k]) for k in start), "an MGPO step must change the parameters"
    assert any(not torch.equal(plain[k], mgpo[k]) for k in plain), "lambda > 0 must change the update"
    assert 0 < logs["mgpo/weight_min"] <= logs["mgpo/weight_mean"] <= 1
    assert sum(logs[f"pass_rate/{b}"] for b in ("zero", "low", "half", "high", "one")) == pytest.approx(1.0)
    assert logs["rollout/tokens_per_second"] > 0


def test_split_by_pass_rate_keeps_varied_groups():
    records = [Record(id=f"r{i}", domain="math", source="t", prompt="p", verifier="math", reference={"answer": "1"}) for i in range(4)]
    scores = [[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]]
    kept, report = split_by_pass_rate(records, scores, 4)
    assert [r.id for r in kept] == ["r2"]
    assert (report.dropped_unsolved, report.dropped_solved, report.dropped_constant) == (["r0"], ["r1"], ["r3"])
    assert report.histogram == {"0/4": 1, "1/4": 1, "2/4": 1, "3/4": 0, "4/4": 1}
    assert report.metrics()["filter/kept"] == 1 and report.metrics()["filter/pass_0_of_4"] == 1


def test_filter_prompts_samples_the_checkpoint(policy, data_root):
    records = _records(data_root)
    cfg = _stage(filter={"engine": "hf", "max_new_tokens": 8}).filter
    kept, report = filter_prompts(records, policy, 4, 8, cfg, seed=0)
    assert len(report.pass_rates) == len(records)
    assert len(kept) + len(report.dropped_unsolved) + len(report.dropped_solved) + len(report.dropped_constant) == 8
    assert sum(report.histogram.values()) == 8 and report.tokens > 0


def _spy_prompts(monkeypatch) -> list[list[str]]:
    """Record the prompt ids of each rollout batch the reward function sees (the data position)."""
    import posttrain.rewards

    seen: list[list[str]] = []
    real = posttrain.rewards.verifier_reward

    def spy(prompts, completions, reference, verifier, **kwargs):
        seen.append(sorted({p[0]["content"] for p in prompts}))
        return real(prompts, completions, reference, verifier, **kwargs)

    monkeypatch.setattr(posttrain.rewards, "verifier_reward", spy)
    return seen


def _context(tmp_path, name, model_dir, checkpoints, data_root) -> StageContext:
    recipe = load_recipe("recipes/smoke.yaml")
    out = tmp_path / name
    out.mkdir()
    return StageContext(stage="rl_math", recipe=recipe, out_dir=out, inputs={"model": model_dir},
                        data_root=str(data_root), checkpoints=checkpoints)


def test_resume_continues_step_counter_and_data_position(policy, data_root, tmp_path, monkeypatch):
    from posttrain.rl.stage import run_rl_stage

    cfg = _stage(train={"max_steps": 4, "learning_rate": 1e-3, "per_device_batch_size": 8}, save_steps=1,
                 data=[{"source": "synthetic_digits", "limit": 16}])
    store = LocalStore(tmp_path / "store")
    seen = _spy_prompts(monkeypatch)
    whole = run_rl_stage(_context(tmp_path, "whole", policy, RemoteCheckpoints(store, "whole"), data_root), cfg)
    uninterrupted = list(seen)
    assert whole["steps"] == 4 and len(uninterrupted) == 4

    seen.clear()
    killer = KillAfter(store, "killed", kill_at=2)
    with pytest.raises(Killed):
        run_rl_stage(_context(tmp_path, "first", policy, killer, data_root), cfg)
    assert seen == uninterrupted[:2]
    assert json.loads((tmp_path / "store" / "killed" / "checkpoints" / "latest.json").read_text())["name"] == \
        "accuracy-checkpoint-2"

    seen.clear()
    resumed = run_rl_stage(_context(tmp_path, "second", policy, RemoteCheckpoints(store, "killed"), data_root), cfg)
    assert resumed["steps"] == 4  # the counter went on from 2 to 4
    assert seen == uninterrupted[2:], "the resumed run must see the batches the uninterrupted run saw next"
    assert (tmp_path / "second" / "model" / "model.safetensors").is_file()


def test_trainer_override_weights_its_slice_of_a_two_process_batch(monkeypatch):
    """Process 1 of 2: TRL hands it rows 4..7 of the gathered batch; the weights come from the
    global pass rates (groups 0..3 and 4..7 here), applied to the local rows only."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl import GRPOTrainer

    from posttrain.rl.mgpo import mgpo_weights
    from posttrain.rl.trainer import MGPOTrainer

    local = torch.tensor([1.0, -1.0, 0.5, -0.5])
    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions",
                        lambda self, inputs: {"advantages": local.clone(), "completion_mask": torch.ones(4, 3)})
    trainer = MGPOTrainer.__new__(MGPOTrainer)
    trainer.mgpo_lambda, trainer.long2short, trainer.num_generations = 1.0, None, 4
    trainer.model = SimpleNamespace(training=True)
    trainer._metrics = {"train": defaultdict(list)}
    trainer.accelerator = SimpleNamespace(process_index=1, gather=lambda t: torch.stack([t, t]))
    trainer._global_rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0])  # p = 0.25, then 0.75
    out = trainer._generate_and_score_completions(inputs=None)
    w = mgpo_weights(torch.tensor([0.25, 0.75]), 1.0)
    assert out["advantages"].tolist() == pytest.approx((local * w[1]).tolist())
    assert trainer._metrics["train"]["mgpo/weight_min"] == [pytest.approx(w.min().item())]
    assert trainer._metrics["train"]["pass_rate/low"] == [0.5] and trainer._metrics["train"]["pass_rate/high"] == [0.5]


def test_lora_phase_saves_merged_weights(policy, data_root, tmp_path):
    from posttrain.checkpoints import param_delta
    from posttrain.rl.stage import train_grpo

    cfg = _stage(lora={"r": 4, "alpha": 8}, train={"max_steps": 1, "learning_rate": 5e-2, "per_device_batch_size": 8})
    summary = train_grpo(_records(data_root), cfg, policy, tmp_path / "model", seed=0, callbacks=[])
    assert summary["steps"] == 1 and summary["param_delta_l2"] > 0
    assert not list((tmp_path / "model").glob("adapter_*")), "the saved policy has the adapters merged"
    assert param_delta(policy, tmp_path / "model")["tensors"] > 0


def test_long_prompts_are_dropped_not_truncated(tiny_model, data_root):
    from posttrain.rl.stage import drop_long_prompts

    records = _records(data_root)
    long = records[0].model_copy(update={"id": "long", "prompt": "7 " * 2000})
    kept, dropped = drop_long_prompts([*records, long], tiny_model, 256)
    assert dropped == ["long"] and kept == records
    assert drop_long_prompts([long], tiny_model, None) == ([long], [])


def test_one_kept_prompt_still_trains(policy, data_root, tmp_path):
    """A filter that keeps a single prompt (as on SmolLM2's MATH level 1) must still give steps."""
    from posttrain.rl.stage import fill_one_batch, train_grpo

    cfg = _stage(train={"max_steps": 2, "learning_rate": 1e-3, "per_device_batch_size": 8,
                        "gradient_accumulation_steps": 2})
    one = _records(data_root)[:1]
    assert [r.id for r in fill_one_batch(one, cfg.train, 4)] == [one[0].id] * 4
    assert train_grpo(one, cfg, policy, tmp_path / "model", seed=0, callbacks=[])["steps"] == 2
