"""Initialise the encoder's timm ViT backbone from weights already on disk (nothing is ever downloaded).

Accepts safetensors files and torch files (`weights_only=True`) holding a plain timm state_dict, one wrapped under
`state_dict` / `model` / `teacher` / `student` (DINO, DINOv2, MAE, m3ret's own `encoder.pt`), with wrapper prefixes
such as `module.` or `backbone.` stripped. Shapes are adapted by timm's `checkpoint_filter_fn` (position embeddings
resampled to the backbone's grid, patch embeddings to its patch size); anything else that does not fit is an error.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import Tensor, nn

WRAPPERS: tuple[str, ...] = ("state_dict", "model", "teacher", "student")
PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "student.", "backbone.", "encoder.", "vit.")
# Top-level names of heads and pretext parts (classifier, DINO/iBOT prototypes, projections; MAE's `decoder*` too)
# that a retrieval backbone never has: ignored when the backbone lacks them. Anything else left over is an error.
HEAD_NAMES: frozenset[str] = frozenset(
    {"head", "heads", "fc_norm", "pre_logits", "head_drop", "dino_head", "ibot_head", "mask_token", "projector",
     "projection", "proj_head", "classifier", "fc", "attn_pool"}
)  # fmt: skip
_SHOWN = 10


class BackboneInitError(ValueError):
    """A checkpoint that cannot initialise the backbone, with the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def load_backbone_weights(vit: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load the checkpoint at `path` into `vit` (a timm VisionTransformer, e.g. `Encoder.vit`), all or nothing.

    Position embeddings [1, P + N', D] are resampled to the backbone's [1, P + N, D] grid and patch kernels
    [D, 3, p', p'] to [D, 3, p, p]. Returns `{"loaded": backbone keys set, "ignored": head keys skipped}`, names
    after prefix stripping. Raises BackboneInitError for an unreadable file, a backbone key the checkpoint lacks, a
    checkpoint key the backbone lacks (other than a head), or a shape that still differs (another embed_dim).
    """
    path = Path(path)
    state = _strip_prefixes(path, _unwrap(path, _read(path)))
    own = vit.state_dict()
    ignored = sorted(k for k in state if k not in own and _is_head(k))
    # mask_token stays in: it is how timm's filter recognises a DINOv2 checkpoint (and it drops it after converting).
    kept = {k: v for k, v in state.items() if k not in ignored or k == "mask_token"}
    try:
        state = checkpoint_filter_fn(kept, vit)
    except Exception as e:  # timm raises whatever reshape/interpolate raise on a shape it cannot adapt
        raise BackboneInitError(path, f"timm could not adapt the checkpoint: {type(e).__name__}: {e}") from e
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k} {tuple(v.shape)} vs backbone {tuple(own[k].shape)}"
        for k, v in sorted(state.items())
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [_listing(n, ks) for n, ks in (("missing", missing), ("unexpected", unexpected)) if ks]
        parts += [_listing("mismatched", mismatched)] if mismatched else []
        raise BackboneInitError(path, "does not fit the backbone; " + "; ".join(parts))
    vit.load_state_dict(state, strict=True)
    return {"loaded": sorted(state), "ignored": ignored}


def _read(path: Path) -> object:
    """The file's content: a dict of tensors (safetensors) or whatever `torch.load(weights_only=True)` returns."""
    if not path.is_file():
        raise BackboneInitError(path, "no such file")
    with path.open("rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header; detected by content, not suffix.
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise BackboneInitError(path, "a safetensors file; install safetensors (`pip install safetensors`)") from e
        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise BackboneInitError(path, f"unreadable safetensors file: {e}") from e
    try:
        # DINO and MAE store their argparse.Namespace next to the weights; it holds plain values, so allowing it keeps
        # weights_only=True (no arbitrary code runs) for their checkpoints. A file object, not the path: torch.load
        # picks safetensors by a `.safetensors` suffix, and here the content has already said it is not one.
        with path.open("rb") as f, torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
        reason = detail.group(1) if detail else f"{type(e).__name__}: {str(e)[:200]}"
        msg = f"not a safetensors file, and torch.load(weights_only=True) refused it: {reason}"
        raise BackboneInitError(path, msg) from e


def _has_tensors(obj: object) -> bool:
    return isinstance(obj, dict) and any(isinstance(v, Tensor) or _has_tensors(v) for v in obj.values())


def _unwrap(path: Path, obj: object) -> dict[str, Tensor]:
    """Descend through wrapper keys (`state_dict` before `model`, `teacher` before `student`) to the flat dict of
    tensors; non-tensor entries (epoch, args) are dropped. A flat DINOv2 dict keeps only its `teacher.` keys."""
    while isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[w] for w in WRAPPERS if _has_tensors(obj.get(w))), None)
        if inner is None:
            raise BackboneInitError(path, f"no tensors found; top-level keys: {sorted(map(str, obj))[:_SHOWN]}")
        obj = inner
    if not isinstance(obj, dict):
        raise BackboneInitError(path, f"holds a {type(obj).__name__}, not a state_dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if any(k.startswith("teacher.") for k in state):
        state = {k.removeprefix("teacher."): v for k, v in state.items() if k.startswith("teacher.")}
    return state


def _strip_prefixes(path: Path, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`module.backbone.blocks.0...` -> `blocks.0...`; two keys that strip to the same name are an error."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key
        while prefix := next((p for p in PREFIXES if name.startswith(p)), None):
            name = name.removeprefix(prefix)
        if name in out:
            raise BackboneInitError(path, f"{key!r} and another key both map to backbone key {name!r}")
        out[name] = value
    return out


def _is_head(key: str) -> bool:
    top = key.split(".")[0]
    return top in HEAD_NAMES or top.startswith("decoder")


def _listing(kind: str, keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {kind} key(s): " + ", ".join(keys[:_SHOWN]) + more
