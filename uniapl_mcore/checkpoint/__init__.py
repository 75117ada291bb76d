"""Checkpoints: HF ↔ Megatron conversion, HF / torch_dist readers, streaming export."""
