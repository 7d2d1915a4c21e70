"""The record schema: validation, and the reference fields verifiers take."""

import pytest
from pydantic import ValidationError

from posttrain.records import Choice, Record, Reference


def test_verifier_reference_has_only_set_fields_and_prompt():
    r = Record(id="x/1", domain="stem", prompt="Which?", verifier="choice", source="arc",
               reference=Reference(choices=[Choice(label="A", text="a"), Choice(label="B", text="b")], answer="B",
                                   solution="\\boxed{B}"))
    assert r.verifier_reference() == {"choices": [{"label": "A", "text": "a"}, {"label": "B", "text": "b"}],
                                      "answer": "B", "prompt": "Which?"}


@pytest.mark.parametrize("bad", [
    {"id": "", "domain": "math", "prompt": "p", "verifier": "math", "source": "s", "reference": {}},
    {"id": "a", "domain": "poetry", "prompt": "p", "verifier": "math", "source": "s", "reference": {}},
    {"id": "a", "domain": "math", "prompt": "p", "verifier": "math", "source": "s", "reference": {"anwser": "1"}},
    {"id": "a", "domain": "math", "prompt": "p", "verifier": "math", "source": "s", "reference": {}, "extra": 1},
])
def test_invalid_records_are_rejected(bad):
    with pytest.raises(ValidationError):
        Record.model_validate(bad)
