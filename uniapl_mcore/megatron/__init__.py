"""The Megatron-Core layer below the trainer: trainable models (DDP chunks, optimizer, LR
schedule) and their builders (``model``), one schedule runner and one optimizer step for
every forward(-backward) (``schedule``), training-state checkpoints at any layout
(``checkpointing``) and the HF parity check (``parity``)."""
