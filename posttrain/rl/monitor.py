"""What an RL phase reports while it trains: held-out evaluations, sample rollouts, checkpoints.

All three are ``transformers`` callbacks, built lazily so this module imports without TRL.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from posttrain.records import Record

log = logging.getLogger(__name__)


def heldout_eval_callback(records: list[Record], tokenizer, every: int, samples: int, max_new_tokens: int,
                          temperature: float, top_p: float, seed: int, log_metrics: Callable[[dict, int], None],
                          rollouts_path: Path, n_rollouts: int):
    """A callback that, every ``every`` optimiser steps (and after the last), evaluates the policy.

    It samples ``samples`` completions per held-out record from the in-memory policy (HF
    generate), grades them with their verifiers, and passes ``heldout/avg_at_<k>`` and
    ``heldout/pass_at_<k>`` (:func:`posttrain.eval.metrics.summarise`) to ``log_metrics(metrics,
    step)``. The first ``n_rollouts`` (prompt, completion, reward) of each evaluation are appended
    to the JSON list at ``rollouts_path`` with their step. The global RNG state is restored
    afterwards, so evaluating does not change the training run.
    """
    import torch
    from transformers import TrainerCallback

    from posttrain.engines import SamplingParams
    from posttrain.engines.hf import HFEngine
    from posttrain.eval.metrics import summarise
    from posttrain.rl.filtering import grade_groups

    params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)

    def evaluate(model, step: int) -> None:
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                groups = HFEngine.from_model(model, tokenizer).generate([r.chat() for r in records], params)
        finally:
            model.train(was_training)
        texts = [[c.text for c in group] for group in groups]
        scores = grade_groups(records, texts)
        figures = summarise([[s >= 1.0 - 1e-6 for s in row] for row in scores])
        log_metrics({f"heldout/{k}": v for k, v in figures.items() if k != "problems"}, step)
        rows = [{"step": step, "id": r.id, "prompt": r.prompt, "completion": t[0], "reward": s[0]}
                for r, t, s in zip(records, texts, scores)][:n_rollouts]
        existing = json.loads(rollouts_path.read_text()) if rollouts_path.is_file() else []
        rollouts_path.write_text(json.dumps(existing + rows, indent=1, ensure_ascii=False))
        log.info("held-out evaluation at step %d: %s", step, {k: round(v, 3) for k, v in figures.items()})

    class HeldoutEval(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                evaluate(model, state.global_step)

    return HeldoutEval()


def checkpoint_upload_callback(upload: Callable[[Path], None]):
    """A callback that hands each checkpoint folder the trainer has just written to ``upload``."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class UploadCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                upload(folder)

    return UploadCheckpoint()
