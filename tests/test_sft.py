"""The SFT stage (3B §2.1): packing and loss masking on a hand-built batch, the schedule fields,
teacher traces and the hard subset wired into the stage, resume from the store, LoRA with fusion."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.checkpoints import RemoteCheckpoints, param_delta
from posttrain.config import SFTStage, TrainSpec, load_recipe
from posttrain.context import StageContext
from posttrain.storage import LocalStore

from faults import Killed, KillAfter

# Three hand-built conversations; the second carries a reasoning block.
PAIRS = [
    {"prompt": [{"role": "user", "content": "Repeat: 1 2 3"}], "completion": [{"role": "assistant", "content": "1 2 3"}]},
    {"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
     "completion": [{"role": "assistant", "content": "<think>\n2 plus 2 is 4\n</think>\n\nThe answer is 4."}]},
    {"prompt": [{"role": "user", "content": "Say 7"}], "completion": [{"role": "assistant", "content": "7"}]},
]


def _trainer(model_dir, tmp_path, packing: bool):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from posttrain.trl_args import sft_config

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    args = sft_config(TrainSpec(max_steps=1, per_device_batch_size=3), tmp_path, 0, max_length=256, packing=packing)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)


def _expected(tokenizer, pair) -> tuple[list[int], list[int]]:
    """The chat-templated ids of one pair and the labels only its assistant tokens should carry."""
    prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(pair["prompt"] + pair["completion"], tokenize=False)
    assert full.startswith(prompt)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids[:len(p_ids)] == p_ids
    return ids, [-100] * len(p_ids) + ids[len(p_ids):]


def test_loss_masking_counts_only_assistant_tokens(tiny_model, tmp_path):
    trainer = _trainer(tiny_model, tmp_path, packing=False)
    tokenizer = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    for row, pair in enumerate(PAIRS):
        ids, labels = _expected(tokenizer, pair)
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert batch["labels"][row, :n].tolist() == labels, "prompt tokens must carry no loss"
        assert (batch["labels"][row, n:] == -100).all(), "padding must carry no loss"
    # the reasoning block is part of the trained completion
    think = batch["labels"][1][batch["labels"][1] != -100].tolist()
    assert "<think>" in tokenizer.decode(think) and "The answer is 4." in tokenizer.decode(think)


def test_packing_concatenates_examples_without_mixing_them(tiny_model, tmp_path):
    trainer = _trainer(tiny_model, tmp_path, packing=True)
    tokenizer, model = trainer.processing_class, trainer.model
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    assert len(rows) == 1, "three short examples fit one packed row"
    batch = trainer.data_collator(rows)
    expected = [_expected(tokenizer, p) for p in PAIRS]
    # best-fit-decreasing packs the longest first: order the expected examples by length
    expected.sort(key=lambda e: -len(e[0]))
    assert batch["input_ids"][0].tolist() == [t for ids, _ in expected for t in ids]
    assert batch["labels"][0].tolist() == [t for _, labels in expected for t in labels]
    starts = [0]
    for ids, _ in expected[:-1]:
        starts.append(starts[-1] + len(ids))
    positions = batch["position_ids"][0].tolist()
    assert [i for i, p in enumerate(positions) if p == 0] == starts, "positions restart at each example"
    # no attention across examples: each packed example's logits equal its logits alone
    model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        for (ids, _), start in zip(expected, starts):
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            assert torch.allclose(packed[start:start + len(ids)], alone, atol=1e-5)


def test_schedule_fields_become_trainer_arguments(tmp_path):
    from posttrain.trl_args import sft_config

    full = TrainSpec(epochs=5, learning_rate=5e-5, min_learning_rate=8e-8, warmup_ratio=0.05,
                     per_device_batch_size=4, gradient_accumulation_steps=32)
    assert full.max_steps is None
    args = sft_config(full, tmp_path, 0, max_length=16384, packing=True, save_steps=50)
    assert (args.max_steps, args.num_train_epochs, args.learning_rate) == (-1, 5, 5e-5)
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr": 8e-8}
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 50, 1)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 128  # the report's global batch
    with pytest.raises(ValueError, match="exactly one"):
        TrainSpec(max_steps=10, epochs=1)
    with pytest.raises(ValueError, match="below"):
        TrainSpec(learning_rate=1e-5, min_learning_rate=1e-4)
    with pytest.raises(ValueError, match="cosine"):
        TrainSpec(lr_scheduler_type="linear", min_learning_rate=1e-8)


def test_cosine_floor_is_reached(tiny_model, tmp_path):
    """The LR ends at min_learning_rate, not 0 (3B: 5e-5 down to 8e-8)."""
    from posttrain.sft import train_sft

    lrs = []
    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
            lrs.append(lr_scheduler.get_last_lr()[0])

    train = TrainSpec(max_steps=4, learning_rate=1e-3, min_learning_rate=1e-5, per_device_batch_size=1)
    train_sft(PAIRS, tiny_model, tmp_path / "out", train, 64, False, 0, [Spy()])
    assert lrs[0] < 1e-3 and lrs[-1] == pytest.approx(1e-5)


# ---------------------------------------------------------------- the stage


def _context(tmp_path, name, model_dir, data_root, checkpoints=None) -> StageContext:
    out = tmp_path / name
    out.mkdir()
    return StageContext(stage="sft_stage1", recipe=load_recipe("recipes/smoke.yaml"), out_dir=out,
                        inputs={"model": model_dir}, data_root=str(data_root), checkpoints=checkpoints)


def _cfg(**overrides) -> SFTStage:
    base = dict(data=[{"source": "synthetic_digits", "limit": 24}, {"source": "math_train", "limit": 8}],
                train={"max_steps": 4, "learning_rate": 1e-2, "per_device_batch_size": 4,
                       "lr_scheduler_type": "constant"}, max_length=96)
    base.update(overrides)
    return SFTStage.model_validate(base)


@pytest.mark.slow
def test_stage_with_teacher_and_hard_subset_writes_dataset_and_reports(tiny_model, data_root, tmp_path):
    from posttrain.sft import run_sft_stage

    cfg = _cfg(teacher={"teachers": [{"model": "input", "engine": "hf"}], "samples_per_query": 2, "max_tokens": 6,
                        "include_reference": True},
               hard_subset={"min_trace_tokens": 4, "min_error_rate": 0.5, "n": 2, "engine": "hf", "max_new_tokens": 6})
    store = LocalStore(tmp_path / "store")
    ctx = _context(tmp_path, "a", tiny_model, data_root, RemoteCheckpoints(store, "stage"))
    summary = run_sft_stage(ctx, cfg)
    out = ctx.out_dir
    construction = json.loads((out / "sft_data_report.json").read_text())
    assert construction["totals"]["queries"] == 32 and construction["totals"]["samples"] == 64
    hard = json.loads((out / "hard_subset_report.json").read_text())
    assert hard["traces"] == summary["traces"] >= 32  # every reference, plus any verified teacher trace
    assert hard["kept_count"] + hard["dropped_count"] == hard["traces"]
    assert hard["rollouts_per_problem"] == 2
    # every dropped trace says why; kept ones are long enough and hard enough
    assert all(row["reasons"] for row in hard["dropped"])
    assert all(row["tokens"] >= 4 and row["error_rate"] >= 0.5 for row in hard["kept"])
    assert sum(c["traces"] for c in summary["selection_table"]) == hard["traces"]
    manifest = json.loads((out / "sft_data" / "manifest.json").read_text())
    lines = (out / "sft_data" / "traces.jsonl").read_text().splitlines()
    assert manifest["traces"] == len(lines) == hard["kept_count"] == summary["examples"]
    assert json.loads(lines[0])["provenance"]["label"] in {"reference", "verified", "pseudo_label"}
    assert summary["param_delta_l2"] > 0
    # a retried attempt at the same stage key reuses the sampled traces from the store
    saved = store.get_json("stage/checkpoints/sft_data_report.json")
    assert saved["report"]["totals"] == construction["totals"]


@pytest.mark.slow
def test_resume_continues_from_the_stored_checkpoint(tiny_model, data_root, tmp_path):
    from posttrain.sft import run_sft_stage

    cfg = _cfg(save_steps=2, probe={"every": 2, "key": "source", "per_subdomain": 2, "k": 1, "samples": 2,
                                    "max_new_tokens": 4, "engine": "hf"})
    store = LocalStore(tmp_path / "store")
    whole = run_sft_stage(_context(tmp_path, "whole", tiny_model, data_root), cfg)
    assert whole["steps"] == 4 and whole["probe_checkpoints"] == 2

    with pytest.raises(Killed):
        run_sft_stage(_context(tmp_path, "first", tiny_model, data_root, KillAfter(store, "s", kill_at=2)), cfg)
    assert json.loads((tmp_path / "store/s/checkpoints/latest.json").read_text())["name"] == "checkpoint-2"
    assert (tmp_path / "store/s/checkpoints/kept/probe/step-2/model.safetensors").is_file()

    resumed = run_sft_stage(_context(tmp_path, "second", tiny_model, data_root, RemoteCheckpoints(store, "s")), cfg)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 4
    # the probe snapshot from before the crash is scored too, and the result equals the uninterrupted run's
    assert resumed["probe_checkpoints"] == 2 and resumed["probe_selection"] == whole["probe_selection"]
    assert param_delta(tmp_path / "whole" / "model", tmp_path / "second" / "model")["max_abs"] < 1e-6


@pytest.mark.slow
def test_lora_stage_merges_adapters_before_probing_and_fusion(tiny_model, data_root, tmp_path):
    from posttrain.merge import is_adapter
    from posttrain.sft import run_sft_stage

    cfg = _cfg(lora={"r": 4, "alpha": 8}, probe={"every": 2, "key": "source", "per_subdomain": 2, "k": 1,
                                                  "samples": 2, "max_new_tokens": 4, "engine": "hf"})
    summary = run_sft_stage(_context(tmp_path, "lora", tiny_model, data_root), cfg)
    model = tmp_path / "lora" / "model"
    assert not is_adapter(model) and (model / "model.safetensors").is_file()
    assert summary["probe_checkpoints"] == 2 and summary["fusion_experts"] >= 1
    assert summary["param_delta_l2"] > 0


def test_kept_folders_survive_newer_checkpoints(tmp_path):
    store = LocalStore(tmp_path / "store")
    remote = RemoteCheckpoints(store, "stage")
    for name in ("step-1", "checkpoint-1", "checkpoint-2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "w.bin").write_text(name)
    remote.keep(tmp_path / "step-1", "probe")
    remote.upload(tmp_path / "checkpoint-1")
    remote.upload(tmp_path / "checkpoint-2")  # prunes checkpoint-1, never the kept folder
    assert not store.exists("stage/checkpoints/checkpoint-1/w.bin")
    fetched = remote.fetch_kept("probe", tmp_path / "back")
    assert fetched == [tmp_path / "back" / "step-1"] and (fetched[0] / "w.bin").read_text() == "step-1"
    remote.clear()
    assert store.list("stage/") == [] and not (tmp_path / "store" / "stage").exists()
