"""Pretraining: the loop, its learning-rate schedule, checkpoints, and torchrun process setup."""
