"""Milvus index of frame and series embeddings: schema, typed filters, versioned collections behind an alias."""
