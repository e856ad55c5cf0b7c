"""Retrieval evaluation: ranking and metrics (P@K, hit rate R@K, mAP@10), labeled benchmark folders, baselines."""
