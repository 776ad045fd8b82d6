"""The checkpoints shipped with onerec-jax as package data (import name
onerec_checkpoints): the demo, a small FP16 OneRec-V2 in the PyTorch source format."""

import pathlib

DEMO = pathlib.Path(__file__).resolve().parent / "demo"
