"""Group-disjoint splits: benchmark roles honoured, groups never cross, assignment stable as data grows."""

from __future__ import annotations

import pandas as pd
import pytest

from m3ret.config import SplitConfig
from m3ret.data.splits import SplitLeakageError, assert_group_disjoint, make_splits, split_summary


def _manifest(n_patients: int = 200, per_patient: int = 3) -> pd.DataFrame:
    rows = []
    for p in range(n_patients):
        for s in range(per_patient):
            rows.append(
                {
                    "item_id": f"item-{p}-{s}",
                    "dataset": "ct",
                    "patient_hash": f"pat{p}",
                    "series_hash": f"ser{p}-{s}",
                    "group_hash": "",
                    "role": "",
                    "modality": "ct",
                }
            )
    for i in range(20):
        rows.append(
            {
                "item_id": f"bench-{i}",
                "dataset": "bench",
                "patient_hash": "",
                "series_hash": "",
                "group_hash": f"g{i // 2}",
                "role": "query" if i < 6 else "gallery",
                "modality": "xray",
            }
        )
    return pd.DataFrame(rows)


def test_patients_never_cross_and_roles_are_kept() -> None:
    manifest = _manifest()
    splits = make_splits(manifest, SplitConfig(gallery_frac=0.2, query_frac=0.1))
    joined = splits.merge(manifest, on="item_id")
    assert (joined.groupby("patient_hash").split.nunique()[lambda s: s.index != ""] == 1).all()
    bench = joined[joined.dataset == "bench"]
    assert (bench.split == bench.role).all()
    fractions = joined[joined.dataset == "ct"].split.value_counts(normalize=True)
    assert 0.1 < fractions["gallery"] < 0.3 and 0.03 < fractions["query"] < 0.2


def test_group_by_series_splits_a_patient_across_sets() -> None:
    splits = make_splits(_manifest(), SplitConfig(group_by="series", gallery_frac=0.3, query_frac=0.3))
    joined = splits.merge(_manifest(), on="item_id")
    assert (joined[joined.dataset == "ct"].groupby("patient_hash").split.nunique() > 1).any()


def test_adding_data_keeps_existing_assignments() -> None:
    small = make_splits(_manifest(100), SplitConfig())
    large = make_splits(_manifest(200), SplitConfig())
    merged = small.merge(large, on="item_id", suffixes=("_small", "_large"))
    assert len(merged) == len(small) and (merged.split_small == merged.split_large).all()


def test_a_benchmark_group_in_both_roles_is_kept_and_reported() -> None:
    manifest = _manifest()
    manifest.loc[manifest.item_id == "bench-6", "group_hash"] = "g0"  # g0 is a query group
    splits = make_splits(manifest, SplitConfig())
    assert splits.set_index("item_id").loc["bench-6", "split"] == "gallery"
    assert split_summary(splits, manifest)["benchmark_groups_in_both_roles"] == 1


def test_an_assigned_group_crossing_splits_is_refused() -> None:
    splits = make_splits(_manifest(), SplitConfig())
    moved = splits.index[(~splits.benchmark_role) & (splits.split == "pretrain")][0]
    splits.loc[moved, "group"] = splits.loc[splits.split == "gallery", "group"].iloc[0]
    with pytest.raises(SplitLeakageError, match="cross splits"):
        assert_group_disjoint(splits)
