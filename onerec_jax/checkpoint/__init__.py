"""Checkpoints: PyTorch-format sources, conversion (and export back), the Orbax store, the
shipped demo, and `load`, the one loader every command uses."""

from onerec_jax.checkpoint.convert import (
    check_source,
    convert,
    export,
    jax_to_torch,
    read_config,
    torch_to_jax,
)
from onerec_jax.checkpoint.loader import (
    DEMO_SOURCE,
    Checkpoint,
    demo_converted,
    load,
    load_demo,
)
from onerec_jax.checkpoint.source import CheckpointError, open_source
from onerec_jax.checkpoint import store
from onerec_jax.checkpoint.store import (
    abstract_params,
    load_rules,
    read_metadata,
    restore,
    save,
)

__all__ = ["Checkpoint", "CheckpointError", "DEMO_SOURCE", "abstract_params",
           "check_source", "convert", "demo_converted", "export", "jax_to_torch", "load",
           "load_demo", "load_rules", "open_source", "read_config", "read_metadata",
           "restore", "save", "store", "torch_to_jax"]
