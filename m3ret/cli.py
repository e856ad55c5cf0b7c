"""`m3ret <command>`: thin shells around library functions; every dvc stage is one command.

params.yaml is read here once and each function gets its own typed section.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3ret.config import ConfigError, Params, load_params, profile_names, profile_summary
from m3ret.data.errors import InputError
from m3ret.index.errors import IndexNotReadyError
from m3ret.index.filters import FilterError

SALT_ENV = "M3RET_ID_SALT"
MILVUS_TOKEN_ENV = "M3RET_MILVUS_TOKEN"


def _write_json(path: str | Path, data: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def id_salt(params: Params) -> bytes:
    from m3ret.data.phi import load_or_create_salt

    from_env = os.environ.get(SALT_ENV, "")
    return from_env.encode() if from_env else load_or_create_salt(Path(params.ingest.salt_file))


def cmd_demo_data(params: Params, args: argparse.Namespace) -> None:
    from m3ret.data.demo_corpus import build_demo_corpus

    counts = build_demo_corpus(params.demo_data)
    print(f"demo corpus in {params.demo_data.out}: {counts}")


def cmd_ingest(params: Params, args: argparse.Namespace) -> None:
    from m3ret.data.ingest import ingest, ingest_summary

    if not params.ingest.sources:
        raise ConfigError("ingest.sources is empty: list at least one folder or file")
    manifest, quarantine = ingest(params.ingest, params.read, id_salt(params))
    summary = ingest_summary(manifest, quarantine)
    _write_json("reports/ingest.json", summary)
    print(f"ingest: {summary['items']} items ({summary['frames']} frames), {summary['quarantined']} quarantined")
    for row in quarantine.itertuples():
        print(f"  quarantined {row.path}: {row.reason}")


def cmd_preprocess(params: Params, args: argparse.Namespace) -> None:
    from m3ret.data.preprocess import preprocess

    manifest = pd.read_parquet(params.ingest.out)
    frames, quarantine = preprocess(manifest, params.preprocess, params.read)
    quarantine.to_csv("reports/preprocess_quarantine.csv", index=False)
    summary = {"items": int(frames.item_id.nunique()), "frames": len(frames), "quarantined": len(quarantine)}
    _write_json("reports/preprocess.json", summary)
    print(f"preprocess: {summary['frames']} frames from {summary['items']} items, {len(quarantine)} quarantined")


def cmd_split(params: Params, args: argparse.Namespace) -> None:
    from m3ret.data.splits import make_splits, split_summary, write_splits

    manifest = pd.read_parquet(params.ingest.out)
    splits = make_splits(manifest, params.split)
    write_splits(splits, params.split.out)
    summary = split_summary(splits, manifest)
    _write_json("reports/split.json", summary)
    print(f"split: {summary['items']} items, groups {summary['groups']}")


def cmd_pretrain(params: Params, args: argparse.Namespace) -> None:
    from m3ret.train.pretrain_loop import pretrain

    cfg = params.pretrain
    evaluate = None
    if cfg.eval_bench:
        from m3ret.eval.benchmark import benchmark_evaluator, load_benchmark

        bench = load_benchmark(Path(cfg.eval_bench), params.read, params.preprocess, Path(cfg.eval_cache))
        evaluate = benchmark_evaluator(bench, params.readout)
    metrics = pretrain(
        cfg, Path(params.preprocess.out), Path(params.split.out), evaluate, cfg.eval_every, max_steps=args.max_steps
    )
    print("pretrain: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" not in k))


def _index(params: Params):
    from m3ret.index.milvus_index import MilvusIndex

    return MilvusIndex(params.index, token=os.environ.get(MILVUS_TOKEN_ENV, ""))


def cmd_embed(params: Params, args: argparse.Namespace) -> None:
    from m3ret.models.embeddings import embed_pipeline_outputs

    summary = embed_pipeline_outputs(params)
    _write_json("reports/embed.json", summary)
    print(f"embed: model {summary['model_version']}: {summary['frames']} frames, {summary['items']} items")


def cmd_index(params: Params, args: argparse.Namespace) -> None:
    from m3ret.index.build import build_collection
    from m3ret.models.embeddings import EmbeddingSet

    index = _index(params)
    try:
        name = build_collection(index, EmbeddingSet.load(params.embed.out))
        summary = {"collection": name, "rows": index.count(name), "published": index.current()}
    finally:
        index.close()
    _write_json("reports/index.json", summary)
    print(f"index: {name} holds {summary['rows']} rows; alias {params.index.alias} -> {summary['published']}")


def cmd_search(params: Params, args: argparse.Namespace) -> None:
    from m3ret.index.filters import SearchFilter
    from m3ret.index.query import embed_file, search_query
    from m3ret.models.encoder import load_encoder

    where = SearchFilter(modality=tuple(args.modality), dataset=tuple(args.dataset), level=args.level)
    where.expression()  # a bad filter value fails before the encoder is loaded
    query = embed_file(args.file, load_encoder(params.embed.model), params.read, params.preprocess)
    index = _index(params)
    try:
        hits = search_query(index, query, args.k, where)
    finally:
        index.close()
    shown = ("item_id", "level", "modality", "dataset", "kind", "split", "label", "frame_index", "source_path")
    results = [
        {"rank": r + 1, "score": round(h.score, 4), **{f: h.fields[f] for f in shown}} for r, h in enumerate(hits)
    ]
    if args.json:
        print(json.dumps({"query": str(args.file), "kind": query.meta.get("kind"), "hits": results}, indent=2))
    else:
        print(f"{args.file}: {query.meta.get('kind')}, {len(query.frames)} frame(s); top {len(results)}")
        print(pd.DataFrame(results).to_string(index=False) if results else "no hits")
    if args.grid:
        _search_grid(params, args, query, hits)


def _search_grid(params: Params, args: argparse.Namespace, query, hits) -> None:
    """The query (as the model sees it) and its hits (their stored frames) in one picture."""
    from m3ret.data.thumbnails import Thumbnails
    from m3ret.eval.retrieval_grid import retrieval_grid

    thumbnails = Thumbnails(Path(params.preprocess.out), params.preprocess.size)
    cells = []
    for hit in hits:
        frame_index = hit.fields["frame_index"] if hit.fields["level"] == "frame" else None
        try:
            image = thumbnails.frame(hit.fields["item_id"], frame_index)
        except KeyError:  # indexed by a refresh batch, not in the pipeline's frame store
            image = np.zeros((params.preprocess.size, params.preprocess.size, 3), np.uint8)
        cells.append((image, f"{hit.score:.3f} {hit.fields['modality']}\n{hit.fields['dataset']}"))
    retrieval_grid([(query.preview(), f"query\n{args.file.name}", cells)], args.grid)
    print(f"grid: {args.grid}")


def cmd_evaluate(params: Params, args: argparse.Namespace) -> None:
    from m3ret.eval.evaluate_stage import COMPARISON, evaluate_pipeline_outputs
    from m3ret.models.embeddings import EmbeddingSet
    from m3ret.models.encoder import load_encoder

    encoder = load_encoder(params.embed.model)
    if args.bench:
        _evaluate_bench(params, args.bench, encoder)
        return
    embeddings = EmbeddingSet.load(params.embed.out)
    index = _index(params)
    try:
        collection = index.collection_name(embeddings.model_version)
        report = evaluate_pipeline_outputs(index, collection, embeddings, encoder, params)
    finally:
        index.close()
    print((Path(params.evaluate.out) / COMPARISON).read_text())
    print(f"gate: {report['reason']}; alias {params.index.alias} -> {report['published']}")


def _evaluate_bench(params: Params, bench: Path, encoder) -> None:
    """`m3ret evaluate --bench DIR|FILE.npz`: the encoder and the two floors on a labeled benchmark, no gate."""
    import dataclasses
    import tempfile

    from m3ret.eval.index_evaluation import evaluate_benchmark, format_comparison, write_evaluation_outputs

    with tempfile.TemporaryDirectory(prefix="m3ret-bench-") as scratch:
        index_cfg = dataclasses.replace(params.index, uri=str(Path(scratch) / "bench.db"))
        results = evaluate_benchmark(
            bench, encoder, params.evaluate, params.readout, index_cfg, params.read, params.preprocess
        )
    out = Path(params.evaluate.out) / f"bench-{bench.stem}"
    write_evaluation_outputs(results, out)
    print(format_comparison(results))
    print(f"metrics: {out / 'metrics.json'}")


def cmd_drift(params: Params, args: argparse.Namespace) -> None:
    from m3ret.models.embeddings import EmbeddingSet
    from m3ret.monitoring.drift import drift_stage

    summary = drift_stage(EmbeddingSet.load(params.embed.out), params.drift)
    for scope in summary["scopes"]:
        score = "-" if scope["score"] is None else f"{scope['score']:.4f}"
        print(f"  {scope['scope']:>12}: {scope['status']:<18} score {score:>8}  drifted={scope['drifted']}")
    print(f"drift ({summary['method']}, threshold {summary['threshold']}): drifted={summary['drifted']}")
    print(f"report: {summary['files']['html']}")


def cmd_serve_import(params: Params, args: argparse.Namespace) -> None:
    from serving.model_store import import_encoder  # the CLI is a shell: it may reach the serving glue, m3ret may not

    print(f"imported into the BentoML model store as {import_encoder(Path(params.embed.model), params)}")


def cmd_flows(params: Params, args: argparse.Namespace) -> None:
    from flows.__main__ import main as flows_main  # the CLI is a shell: it may reach the flows glue, m3ret may not

    rest = args.rest if "--params" in args.rest else [*args.rest, "--params", args.params]
    flows_main(rest)


def cmd_profile(params: Params, args: argparse.Namespace) -> None:
    from m3ret.config import profile_overrides

    print(" ".join(f"-S {override}" for override in profile_overrides(args.name)))


COMMANDS = {
    "demo-data": (cmd_demo_data, "build the demo corpus from files that ship with installed packages"),
    "ingest": (cmd_ingest, "scan sources into data/manifest.parquet; quarantine bad files"),
    "preprocess": (cmd_preprocess, "decode items into sharded model-ready frames"),
    "split": (cmd_split, "group-disjoint pretrain/gallery/query splits"),
    "pretrain": (cmd_pretrain, "self-supervised pretraining (MAE or SimDINO); resumes from the last checkpoint"),
    "embed": (cmd_embed, "frame and series embeddings of every stored frame with the pretrained encoder"),
    "index": (cmd_index, "build the model version's Milvus collection from the embeddings (not yet published)"),
    "search": (cmd_search, "find the items most similar to a file (image, DICOM file or series folder, NIfTI, video)"),
    "evaluate": (cmd_evaluate, "retrieval metrics through the index with baselines; the gate publishes the collection"),
    "drift": (cmd_drift, "Evidently embedding-drift report: current vs reference splits, overall and per modality"),
    "serve-import": (
        cmd_serve_import,
        "put embed.model (encoder + readout) into the BentoML model store for the service",
    ),
    "flows": (cmd_flows, "`m3ret flows serve [--interval-seconds N] [--only refresh,drift]`: the scheduled flows"),
    "profile": (cmd_profile, "print a named profile as `dvc exp run` overrides: dvc exp run $(m3ret profile NAME)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3ret", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name, help=help_text) for name, (_fn, help_text) in COMMANDS.items()}
    commands["profile"].formatter_class = argparse.RawDescriptionHelpFormatter
    commands["profile"].epilog = "profiles (expected wall time):\n" + "\n".join(
        f"  {name:<15} {profile_summary(name)}" for name in profile_names()
    )
    commands["pretrain"].add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    commands["flows"].add_argument("rest", nargs=argparse.REMAINDER, help="serve [options]: see python -m flows -h")
    commands["evaluate"].add_argument(
        "--bench", type=Path, default=None, help="only this labeled folder or MedMNIST npz (no gate, no publish)"
    )
    search = commands["search"]
    search.add_argument("file", type=Path, help="image, DICOM file or series folder, NIfTI or video")
    search.add_argument("--k", type=int, default=10, help="number of hits (default 10)")
    search.add_argument("--modality", action="append", default=[], help="keep only this modality (repeatable)")
    search.add_argument("--dataset", action="append", default=[], help="keep only this dataset (repeatable)")
    search.add_argument("--level", choices=["frame", "series"], default="series", help="frames or whole series")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--grid", type=Path, default=None, help="write a picture of the query and its hits")
    commands["profile"].add_argument("name", help=f"one of: {', '.join(profile_names())}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Milvus Lite's embedded server answers a client probe it does not implement with a logged traceback, and faiss
    # reports which CPU build it loaded: neither is actionable for a user.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        params = load_params(args.params)
        COMMANDS[args.command][0](params, args)
    except (ConfigError, FileNotFoundError, InputError, FilterError, IndexNotReadyError) as err:
        print(f"m3ret {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
