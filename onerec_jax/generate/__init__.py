"""Semantic-ID beam search (the jit-compiled inference path): generate, warm-up,
the valid-item table for constrained decoding, request-context files, and scaling out
over a device mesh (sharding)."""

from onerec_jax.generate import compile_cache, sharding
from onerec_jax.generate.api import (DEFAULT_BUCKETS, check_inputs, chunks, generate,
                                     pad_batch, preload, warmup)
from onerec_jax.generate.beam import EMPTY, Result, beam_search, compiled_search, lower
from onerec_jax.generate.contexts import (load_contexts, load_valid_items, random_contexts,
                                          random_items, save_contexts)
from onerec_jax.generate.items import GenerateInputError, ItemTable, build_item_table

__all__ = ["DEFAULT_BUCKETS", "EMPTY", "GenerateInputError", "ItemTable", "Result",
           "beam_search", "build_item_table", "check_inputs", "chunks", "compile_cache",
           "compiled_search",
           "generate", "load_contexts", "load_valid_items", "lower", "pad_batch",
           "preload", "random_contexts", "random_items", "save_contexts", "sharding", "warmup"]
