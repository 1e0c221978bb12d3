"""Data layer for distillation training: tokenizers, document sources, synthetic
MQAR and copying, packing and the checkpointable grain input pipeline."""

from jet_jax_train.data.copy_task import CopyConfig, CopySource, make_copy_example
from jet_jax_train.data.mqar import MQARConfig, MQARSource, make_mqar_example, mqar_accuracy
from jet_jax_train.data.packing import ROW_KEYS, encode_document, finalize_row, lm_example
from jet_jax_train.data.pipeline import (DataConfig, TrainIterator, make_eval_batches,
                                 make_mqar_eval_batches, make_task_eval_batches, make_train_dataset,
                                 make_train_iterator)
from jet_jax_train.data.sources import (JsonlSource, ParquetSource, SourceConfig, TextFileSource,
                                open_document_source)
from jet_jax.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "ByteTokenizer", "CopyConfig", "CopySource", "DataConfig", "HFTokenizer", "JsonlSource", "MQARConfig", "MQARSource",
    "ParquetSource", "ROW_KEYS", "SourceConfig", "TextFileSource", "Tokenizer", "TrainIterator",
    "encode_document", "finalize_row", "lm_example", "load_tokenizer", "make_eval_batches",
    "make_copy_example", "make_mqar_eval_batches", "make_mqar_example", "make_task_eval_batches", "make_train_dataset", "make_train_iterator",
    "mqar_accuracy", "open_document_source",
]
