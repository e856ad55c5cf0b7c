"""m3ret: zero-shot multimodal medical image retrieval."""
