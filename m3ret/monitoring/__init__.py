"""Embedding drift monitoring (Evidently)."""
