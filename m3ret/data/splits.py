"""The split stage: group-disjoint pretrain / gallery / query sets, with the proof that no group crosses splits.

Items from a benchmark (manifest folder, MedMNIST) keep their role. Other items are assigned per group (patient or
series) by a keyed hash of the group, so adding data later never moves an existing group to another split.
A benchmark may put one group in both roles (its evaluation protocol drops the query's own group from the ranking,
so this inflates nothing); such groups are counted and reported, not refused.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3ret.config import SplitConfig

SPLITS = ("pretrain", "gallery", "query")
log = logging.getLogger(__name__)


class SplitLeakageError(AssertionError):
    """A patient/series group would appear in two splits: retrieval metrics would be inflated."""


def group_keys(manifest: pd.DataFrame, group_by: str) -> pd.Series:
    """The leakage unit of each item: benchmark group, else patient (or series) hash, else the item itself."""
    primary = manifest["patient_hash"] if group_by == "patient" else manifest["series_hash"]
    fallback = manifest["series_hash"].where(manifest["series_hash"] != "", manifest["item_id"])
    person = primary.where(primary != "", fallback)
    benchmark = manifest["dataset"] + ":" + manifest["group_hash"]
    return benchmark.where(manifest["group_hash"] != "", person)


def _unit_interval(keys: pd.Series, seed: int) -> np.ndarray:
    digests = [hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8] for key in keys]
    return np.array([int.from_bytes(d, "big") / 2**64 for d in digests])


def groups_in_several_splits(splits: pd.DataFrame) -> pd.Index:
    per_group = splits.groupby("group")["split"].nunique()
    return per_group.index[per_group > 1]


def assert_group_disjoint(splits: pd.DataFrame) -> None:
    """Raise SplitLeakageError naming the m3ret-assigned groups found in more than one split."""
    leaking = groups_in_several_splits(splits[~splits["benchmark_role"]])
    if len(leaking):
        raise SplitLeakageError(f"{len(leaking)} group(s) cross splits, e.g. {list(leaking[:5])}")


def make_splits(manifest: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """[item_id, group, split, benchmark_role] for every manifest item; asserts that no group m3ret assigned
    crosses splits before returning."""
    groups = group_keys(manifest, cfg.group_by)
    u = pd.Series(_unit_interval(groups, cfg.seed), index=manifest.index)
    by_hash = np.where(
        u < cfg.query_frac, "query", np.where(u < cfg.query_frac + cfg.gallery_frac, "gallery", "pretrain")
    )
    benchmark_role = manifest["role"].isin(["query", "gallery"])
    split = manifest["role"].where(benchmark_role, pd.Series(by_hash, index=manifest.index))
    splits = pd.DataFrame(
        {"item_id": manifest["item_id"], "group": groups, "split": split, "benchmark_role": benchmark_role}
    )
    assert_group_disjoint(splits)
    crossing = groups_in_several_splits(splits[splits["benchmark_role"]])
    if len(crossing):
        log.warning(
            "%d benchmark group(s) hold both query and gallery items (kept as the benchmark says)", len(crossing)
        )
    return splits


def write_splits(splits: pd.DataFrame, out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    splits.to_parquet(out, index=False)


def split_summary(splits: pd.DataFrame, manifest: pd.DataFrame) -> dict[str, Any]:
    """Items and groups per split, and items per split and modality, for the dvc metrics file."""
    joined = splits.merge(manifest[["item_id", "modality"]], on="item_id")
    return {
        "items": {s: int((splits.split == s).sum()) for s in SPLITS},
        "groups": {s: int(splits.loc[splits.split == s, "group"].nunique()) for s in SPLITS},
        "benchmark_groups_in_both_roles": len(groups_in_several_splits(splits[splits["benchmark_role"]])),
        "by_modality": {
            s: {str(m): int(n) for m, n in joined[joined.split == s]["modality"].value_counts().sort_index().items()}
            for s in SPLITS
        },
    }
