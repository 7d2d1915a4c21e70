"""Verifiers: one registry used by rewards, distillation filters and evaluation.

Importing this package registers every verifier module.
"""

from posttrain.verifiers import choice, code, instruct, math, synthetic  # noqa: F401
from posttrain.verifiers.base import Verdict, Verifier, get_verifier, register_verifier, registered_verifiers

__all__ = ["Verdict", "Verifier", "get_verifier", "register_verifier", "registered_verifiers"]
