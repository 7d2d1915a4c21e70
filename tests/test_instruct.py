"""Instruct RL (3B §2.4): every constraint kind graded right both ways, attachment records its
parameters, decontamination against IFEval/IFBench, reward modes, the judge reward, and an RL
step on a tiny model that changes parameters."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from posttrain.constraints import CONSTRAINT_IDS, attach_constraints, check_decontaminated
from posttrain.records import Record, Reference
from posttrain.verifiers.base import verify_all

# kind -> (kwargs, a compliant response, a violating response)
CASES = {
    "change_case:english_lowercase": ({}, "this answer is all in lowercase letters.", "This Answer Has Capitals."),
    "change_case:english_capital": ({}, "THIS ANSWER IS ALL IN CAPITAL LETTERS.", "this answer is not."),
    "change_case:capital_word_frequency": ({"capital_frequency": 2, "capital_relation": "at least"},
                                           "THE ANSWER IS four", "the answer is four"),
    "punctuation:no_comma": ({}, "no commas in this answer", "one, two"),
    "startend:quotation": ({}, '"the answer is four"', "the answer is four"),
    "startend:end_checker": ({"end_phrase": "Hope this helps."}, "The answer is 4. Hope this helps.",
                             "Hope this helps. The answer is 4."),
    "combination:repeat_prompt": ({"prompt_to_repeat": "What is 2 + 2?"}, "What is 2 + 2? The answer is 4.",
                                  "The answer is 4."),
    "length_constraints:number_words": ({"relation": "less than", "num_words": 20}, "The answer is four.",
                                        " ".join(["word"] * 30)),
    "length_constraints:number_sentences": ({"relation": "less than", "num_sentences": 3},
                                            "This is one. This is two.",
                                            "This is one. This is two. This is three. This is four."),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, "First part.\n\n***\n\nSecond part.",
                                             "Only one part."),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, "The answer is 4.\n\nP.S. Thanks for asking.",
                                      "The answer is 4."),
    "detectable_format:title": ({}, "<<Four>>\nThe answer is 4.", "The answer is 4."),
    "detectable_format:json_format": ({}, '{"answer": 4}', "answer: 4"),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "* first\n* second", "* only one"),
    "detectable_format:multiple_sections": ({"section_spliter": "Section", "num_sections": 2},
                                            "Section 1\nsetup\nSection 2\nanswer", "Section 1\nall of it"),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 1}, "The *answer* is 4.", "The answer is 4."),
    "keywords:existence": ({"keywords": ["answer", "step"]}, "Step by step, the answer is 4.", "It is 4."),
    "keywords:forbidden_words": ({"forbidden_words": ["answer", "step"]}, "It is 4.", "The answer is 4."),
    "keywords:frequency": ({"keyword": "step", "frequency": 2, "relation": "at least"}, "step after step", "one step"),
    "keywords:letter_frequency": ({"letter": "e", "let_frequency": 3, "let_relation": "at least"},
                                  "these eels", "a cat"),
}


def _grade(kind: str, kwargs: dict, texts: list[str]):
    ref = {"instruction_id_list": [kind], "kwargs": [kwargs], "prompt": "What is 2 + 2?"}
    return verify_all(["instruct"] * len(texts), texts, [ref] * len(texts))


def test_every_constraint_kind_has_a_case():
    assert set(CASES) == set(CONSTRAINT_IDS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_constraint_accepts_compliant_and_rejects_violating(kind):
    kwargs, good, bad = CASES[kind]
    ok, violated = _grade(kind, kwargs, [good, bad])
    assert ok.passed and ok.score == 1.0, (kind, good, ok.details)
    assert not violated.passed and violated.score == 0.0, (kind, bad, violated.details)


def _base(n: int = 40) -> list[Record]:
    return [Record(id=f"b/{i}", domain="math", prompt=f"Problem {i}: what is {i} + {i}?", verifier="math",
                   reference=Reference(answer=str(2 * i)), source="gsm8k_train", meta={"problem": f"What is {i} + {i}?"})
            for i in range(n)]


def test_attached_constraints_are_recorded_and_compatible():
    from posttrain.constraints import _CONFLICTS

    records = attach_constraints(_base(), per_prompt=3, seed=0)
    assert len(records) == 40 and {r.verifier for r in records} == {"instruct"}
    seen = set()
    for r in records:
        ids = r.reference.instruction_id_list
        assert [c["id"] for c in r.meta["constraints"]] == ids and len(set(ids)) == 3
        assert [c["kwargs"] for c in r.meta["constraints"]] == r.reference.kwargs
        assert not any(frozenset((a, b)) in _CONFLICTS for a in ids for b in ids if a != b)
        assert r.prompt.startswith(r.meta["problem"])
        seen.update(ids)
    assert len(seen) > 10  # draws spread over the kinds
    assert attach_constraints(_base(), 3, seed=0)[5].prompt == records[5].prompt  # seeded
    only = attach_constraints(_base(4), 1, seed=0, kinds=["punctuation:no_comma"])
    assert {r.reference.instruction_id_list[0] for r in only} == {"punctuation:no_comma"}
    with pytest.raises(ValueError, match="unknown kinds"):
        attach_constraints(_base(2), 1, 0, kinds=["no:such"])


def test_decontamination_refuses_ifeval_prompts_and_passes_training_prompts(data_root):
    from posttrain.data import load_mixture

    train = attach_constraints(load_mixture([{"source": "gsm8k_train", "limit": 50}], str(data_root)), 1, 0)
    assert check_decontaminated(train, str(data_root))["checked"] == 50
    ifeval = load_mixture([{"source": "ifeval", "limit": 1}], str(data_root))[0]
    planted = Record(id="planted/1", domain="math", prompt="x", verifier="math", reference=Reference(answer="1"),
                     source="gsm8k_train", meta={"problem": "Please answer: " + ifeval.prompt[:400]})
    with pytest.raises(ValueError, match="planted/1.*shares a 10-gram"):
        check_decontaminated(train + attach_constraints([planted], 1, 0), str(data_root))
    with pytest.raises(ValueError, match="from ifeval"):
        check_decontaminated(attach_constraints([ifeval], 1, 0), str(data_root))


def test_reward_modes_partial_and_all_or_nothing():
    from posttrain.rewards import verifier_reward

    ref = json.dumps({"instruction_id_list": ["punctuation:no_comma", "change_case:english_capital"],
                      "kwargs": [{}, {}], "prompt": "p"})
    texts = ["no commas but lowercase", "NO COMMAS AND CAPITALS"]
    partial = verifier_reward(["p"] * 2, texts, [ref] * 2, ["instruct"] * 2, reward_mode=["partial"] * 2)
    strict = verifier_reward(["p"] * 2, texts, [ref] * 2, ["instruct"] * 2, reward_mode=["all"] * 2)
    assert partial == [0.5, 1.0] and strict == [0.0, 1.0]


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that scores by response length, or fails on request."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        if "FAIL" in text:
            self.send_response(400)
            self.end_headers()
            return
        score = 7 if "long answer" in text else 2
        payload = json.dumps({"choices": [{"index": 0, "message": {"content": f"Score: {score}"},
                                           "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_judge_reward_scores_through_an_openai_compatible_server():
    from posttrain.config import JudgeSpec
    from posttrain.rewards import judge_reward, parse_judge_score
    from posttrain.teacher import TeacherClient

    assert parse_judge_score("Reasoning... Score: 8") == 0.8 and parse_judge_score("score=10") == 1.0
    assert parse_judge_score("no number") is None and parse_judge_score("Score: 11") is None
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = JudgeSpec(url=f"http://127.0.0.1:{server.server_port}/v1", model="judge")
        reward = judge_reward(TeacherClient(spec.url, spec.model, api_key_env=None, max_retries=0), spec.rubric)
        prompts = [[{"role": "user", "content": "q"}]] * 3
        assert reward(prompts, ["a long answer", "short", "FAIL"]) == [0.7, 0.2, None]
    finally:
        server.shutdown()


@pytest.mark.slow
def test_instruct_rl_step_changes_parameters_with_a_varying_reward(policy, data_root, tmp_path):
    from posttrain.checkpoints import param_delta
    from posttrain.config import InstructRLStage, load_recipe
    from posttrain.context import StageContext
    from posttrain.data import load_mixture
    from posttrain.rl.stage import run_rl_stage

    cfg = InstructRLStage.model_validate({
        "prompts": {"sources": [{"source": "gsm8k_train", "limit": 8}], "constraints_per_prompt": 2,
                    "kinds": ["punctuation:no_comma", "keywords:letter_frequency"]},
        "group_size": 4, "max_completion_length": 12, "filter": {"enabled": False},
        "train": {"max_steps": 2, "learning_rate": 1e-2, "per_device_batch_size": 8}})
    records = attach_constraints(load_mixture(cfg.prompts.sources, str(data_root)), 2, 0, cfg.prompts.kinds)
    out = tmp_path / "instruct"
    out.mkdir()
    ctx = StageContext(stage="instruct_rl", recipe=load_recipe("recipes/smoke.yaml"), out_dir=out,
                       inputs={"model": policy}, data_root=str(data_root))
    summary = run_rl_stage(ctx, cfg, records)
    assert summary["steps"] == 2
    assert summary["frac_reward_zero_std_min"] < 1, "the constraint reward must vary within some group"
    assert param_delta(policy, out / "model")["l2"] > 0
