"""Evaluation of any loaded model: perplexity / bits-per-byte, multiple choice (acc, acc_norm
as lm-evaluation-harness), and synthetic retrieval (MQAR, passkey). Used by `jet-jax eval`.

Every function takes a model and token ids (or an `encode` callable); none imports `train`.
"""

from jet_jax.evaluation.data import MCExample, TaskFileError, read_mc_jsonl, read_texts
from jet_jax.evaluation.multiple_choice import multiple_choice
from jet_jax.evaluation.perplexity import perplexity, sliding_windows
from jet_jax.evaluation.report import format_table, write_json
from jet_jax.evaluation.retrieval import mqar_examples, passkey_examples, retrieval_accuracy
from jet_jax.evaluation.scoring import Request, Scorer

__all__ = ["MCExample", "Request", "Scorer", "TaskFileError", "format_table", "mqar_examples",
           "multiple_choice", "passkey_examples", "perplexity", "read_mc_jsonl", "read_texts",
           "retrieval_accuracy", "sliding_windows", "write_json"]
