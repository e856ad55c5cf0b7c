import numpy as np
import pytest

from m3ret.eval.retrieval_metrics import (
    RetrievalResult,
    evaluate_embeddings,
    format_table,
    rank_gallery,
    retrieval_metrics,
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_own_group_items_are_dropped_from_the_ranking():
    query = _unit([[1.0, 0.0]])
    # g0 is the query itself (cos 1), g1 cos ~0.8, g2 cos ~0.45
    gallery = _unit([[1.0, 0.0], [0.8, 0.6], [0.45, 0.9]])
    gallery_groups = np.array(["a", "b", "c"])

    other = rank_gallery(query, gallery, np.array(["z"]), gallery_groups, k=3)
    own = rank_gallery(query, gallery, np.array(["a"]), gallery_groups, k=3)

    assert other.tolist() == [[0, 1, 2]]
    # the own-group item vanishes (not ranked last): the freed slot is empty
    assert own.tolist() == [[1, 2, -1]]


def test_rank_gallery_orders_by_cosine_and_breaks_ties_by_index():
    query = _unit([[1.0, 0.0], [0.0, 1.0]])
    gallery = _unit([[0.0, 1.0], [1.0, 0.1], [1.0, 0.0], [1.0, 0.0]])
    groups_q = np.array([10, 11])
    groups_g = np.array([1, 2, 3, 4])
    topk = rank_gallery(query, gallery, groups_q, groups_g, k=2)
    assert topk.tolist() == [[2, 3], [0, 1]]
    assert topk.dtype == np.int64


def test_chunked_ranking_equals_one_block_and_brute_force():
    rng = np.random.default_rng(0)
    q = _unit(rng.normal(size=(53, 16)))
    g = _unit(rng.normal(size=(211, 16)))
    qg = rng.integers(0, 30, size=53)
    gg = rng.integers(0, 30, size=211)

    chunked = rank_gallery(q, g, qg, gg, k=10, chunk_size=7)
    block = rank_gallery(q, g, qg, gg, k=10, chunk_size=10_000)
    np.testing.assert_array_equal(chunked, block)

    sim = q @ g.T
    sim[qg[:, None] == gg[None, :]] = -np.inf
    reference = np.argsort(-sim, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(chunked, reference)
    assert not (qg[:, None] == gg[chunked]).any()


def test_hand_computed_metrics_on_three_queries():
    # gallery 0..2 are "A", 3..9 are "B"
    gallery_labels = np.array(["A"] * 3 + ["B"] * 7)
    query_labels = np.array(["A", "B", "C"])
    topk = np.array(
        [
            [0, 3, 1, 4, 5, 6, 7, 8, 9, 2],  # rel 1 0 1 0 0 0 0 0 0 1
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # rel 0 0 0 1 1 1 1 1 1 1
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # label C: nothing relevant
        ]
    )
    ap0 = (1 / 1 + 2 / 3 + 3 / 10) / 3
    ap1_sum = 1 / 4 + 2 / 5 + 3 / 6 + 4 / 7 + 5 / 8 + 6 / 9 + 7 / 10
    ap1 = ap1_sum / 7
    m = retrieval_metrics(topk, query_labels, gallery_labels, ks=(1, 5, 10), n_relevant=np.array([5, 7, 0]))

    assert m["P@1"] == pytest.approx(1 / 3)
    assert m["P@5"] == pytest.approx((2 / 5 + 2 / 5 + 0) / 3)
    assert m["P@10"] == pytest.approx((3 / 10 + 7 / 10 + 0) / 3)
    assert m["R@1"] == pytest.approx(1 / 3)
    assert m["R@5"] == pytest.approx(2 / 3)
    assert m["R@10"] == pytest.approx(2 / 3)
    assert m["mAP@10"] == pytest.approx((ap0 + ap1 + 0) / 3)
    # normalised by min(10, n_relevant): query 0 has 5 relevant items of which only 3 were retrieved
    assert m["mAP@10_rel"] == pytest.approx((ap0 * 3 / 5 + ap1 + 0) / 3)


def test_empty_slots_never_count_as_relevant():
    m = retrieval_metrics(np.array([[-1, 0]]), np.array([0]), np.array([0]), ks=(1, 2))
    assert m["P@1"] == 0.0
    assert m["R@2"] == 1.0
    assert m["mAP@2"] == pytest.approx(0.5)


def test_k_beyond_ranked_columns_is_rejected():
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(np.zeros((2, 5), dtype=int), np.zeros(2), np.zeros(1), ks=(1, 10))


def test_evaluate_embeddings_ranks_each_dataset_within_itself():
    # dataset "x": query q (label 1) ; gallery: same-group twin (label 0), far label-1 item, close label-0 item
    # dataset "y": an exact copy of q with label 1, which must never be retrieved for x's query
    emb = _unit(
        [
            [1.0, 0.0, 0.0],  # x query, label 1, group g1
            [1.0, 0.0, 0.0],  # x gallery, label 0, group g1 (own group: dropped)
            [0.0, 1.0, 0.0],  # x gallery, label 1, group g2
            [0.9, 0.3, 0.0],  # x gallery, label 0, group g3
            [1.0, 0.0, 0.0],  # y gallery, label 1, group g9
            [0.0, 0.0, 1.0],  # y query, label 1, group g8
        ]
    )
    labels = np.array([1, 0, 1, 0, 1, 1])
    groups = np.array(["g1", "g1", "g2", "g3", "g9", "g8"])
    roles = np.array(["query", "gallery", "gallery", "gallery", "gallery", "query"])
    datasets = np.array(["x", "x", "x", "x", "y", "y"])

    result = evaluate_embeddings(emb, labels, groups, roles, datasets, k=10)

    assert isinstance(result, RetrievalResult)
    assert set(result.per_dataset) == {"x", "y"}
    x = result.per_dataset["x"]
    # x's ranking: g3 (label 0) then g2 (label 1); the own-group twin and y's copy never appear
    assert x["P@1"] == 0.0
    assert x["R@10"] == 1.0
    assert x["mAP@10"] == pytest.approx(1 / 2)
    assert (x["n_query"], x["n_gallery"]) == (1.0, 3.0)
    assert result.per_dataset["y"]["P@1"] == 1.0
    assert result.mean["P@1"] == pytest.approx(0.5)
    assert result.mean["mAP@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert "n_query" not in result.mean

    table = format_table(result, title="toy")
    assert "| x | 1 / 3 | 0.000 | 0.500 | 1.000 |" in table
    assert table.splitlines()[-1].startswith("| **mean** | 2 / 4 | 0.500 | 0.750 | 1.000 |")


def test_dataset_without_queries_is_skipped_with_a_warning():
    emb = _unit([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.warns(UserWarning, match="'lonely'"):
        result = evaluate_embeddings(
            emb,
            labels=np.array([0, 0, 0]),
            groups=np.array([1, 2, 3]),
            roles=np.array(["query", "gallery", "gallery"]),
            datasets=np.array(["a", "a", "lonely"]),
        )
    assert list(result.per_dataset) == ["a"]
