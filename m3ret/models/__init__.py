"""The encoder (timm ViT + pooling + embedding) and the self-supervised objectives that train it."""
