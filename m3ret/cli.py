"""`m3ret <command>`: thin shells around library functions; every dvc stage is one command -> one `m3ret.stages` run.

params.yaml is read here once (plus the variables of `m3ret.config.ENVIRONMENT`) and handed down.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from m3ret.config import (
    ConfigError,
    Params,
    load_params,
    profile_names,
    profile_overrides,
    profile_summary,
    replace,
)
from m3ret.data.errors import InputError, SourceUnavailableError
from m3ret.index.errors import IndexNotReadyError
from m3ret.index.filters import FilterError


def cmd_demo_data(params: Params, args: argparse.Namespace) -> None:
    from m3ret.stages import demo_data

    print(f"demo corpus in {params.demo_data.out}: {demo_data.run(params)}")


def cmd_sources(params: Params, args: argparse.Namespace) -> None:
    from m3ret.stages import sources

    summary = sources.run(params)
    pacs = f", {summary['dicomweb_series']} DICOMweb series" if "dicomweb_series" in summary else ""
    print(f"sources: {summary['files']} files, {summary['bytes'] / 1e6:.1f} MB{pacs}, digest {summary['digest'][:12]}")


def cmd_ingest(params: Params, args: argparse.Namespace) -> None:
    from m3ret.stages import ingest

    summary = ingest.run(params)
    print(f"ingest: {summary['items']} items ({summary['frames']} frames), {summary['quarantined']} quarantined")
    for row in pd.read_csv(params.ingest.quarantine, dtype=str, keep_default_na=False).itertuples():
        print(f"  quarantined {row.path}: {row.reason}")


def cmd_preprocess(params: Params, args: argparse.Namespace) -> None:
    from m3ret.stages import preprocess

    summary = preprocess.run(params)
    print(f"preprocess: {summary['frames']} frames from {summary['items']} items, {summary['quarantined']} quarantined")


def cmd_split(params: Params, args: argparse.Namespace) -> None:
    from m3ret.stages import split

    summary = split.run(params)
    print(f"split: {summary['items']} items, groups {summary['groups']}")


def cmd_pretrain(params: Params, args: argparse.Namespace) -> None:
    from m3ret.stages import pretrain

    metrics = pretrain.run(params, max_steps=args.max_steps)
    print("pretrain: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" not in k))


def cmd_embed(params: Params, args: argparse.Namespace) -> None:
    from m3ret.stages import embed

    summary = embed.run(params)
    print(f"embed: model {summary['model_version']}: {summary['frames']} frames, {summary['items']} items")


def cmd_index(params: Params, args: argparse.Namespace) -> None:
    from m3ret.stages import index

    summary = index.run(params)
    print(f"index: {summary['collection']} holds {summary['rows']} rows; alias {params.index.alias} -> "
          f"{summary['published']}")  # fmt: skip


def cmd_search(params: Params, args: argparse.Namespace) -> None:
    from m3ret.index.filters import SearchFilter
    from m3ret.index.query import search_queries
    from m3ret.index.schema import HIT_FIELDS
    from m3ret.index.vector_index import open_index
    from m3ret.models.encoder import load_encoder
    from m3ret.models.query import embed_file

    where = SearchFilter(modality=tuple(args.modality), dataset=tuple(args.dataset), level=args.level)
    where.expression()  # a bad filter value fails before the encoder is loaded
    query = embed_file(args.file, load_encoder(params.embed.model), params.read, params.preprocess)
    index = open_index(params.index)
    try:
        [hits] = search_queries(index, [query], args.k, where)
    finally:
        index.close()
    results = [
        {"rank": r + 1, "score": round(h.score, 4), **{f: h.fields[f] for f in HIT_FIELDS}} for r, h in enumerate(hits)
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
    from m3ret.eval.index_evaluation import format_comparison
    from m3ret.stages import evaluate

    if args.bench:
        results, out = evaluate.run_bench(params, args.bench)
        print(format_comparison(results))
        print(f"metrics: {out / 'metrics.json'}")
        return
    report = evaluate.run(params)
    print((Path(params.evaluate.out) / evaluate.COMPARISON).read_text())
    print(f"gate: {report['reason']}; alias {params.index.alias} -> {report['published']}")


def cmd_drift(params: Params, args: argparse.Namespace) -> None:
    from m3ret.stages import drift

    summary = drift.run(params)
    for scope in summary["scopes"]:
        score = "-" if scope["score"] is None else f"{scope['score']:.4f}"
        print(f"  {scope['scope']:>12}: {scope['status']:<18} score {score:>8}  drifted={scope['drifted']}")
    print(f"drift ({summary['method']}, threshold {summary['threshold']}): drifted={summary['drifted']}")
    print(f"report: {summary['files']['html']}")


def cmd_refresh(params: Params, args: argparse.Namespace) -> None:
    from m3ret.stages import refresh

    result = refresh.run(params, args.state_dir)
    if result["rebuild"]:
        rebuild = result["rebuild"]
        print(f"new model {rebuild['model_version']}: {'published' if rebuild['published'] else 'gate failed'}")
    if report := result["refresh"]:
        print(f"refresh {report['batch']}: {len(report['added'])} added, {report['skipped']} skipped, "
              f"{len(report['quarantined'])} quarantined, {len(report['deleted'])} deleted")  # fmt: skip


def cmd_listen(params: Params, args: argparse.Namespace) -> None:
    from m3ret.data.dicom_listener import start_listener
    from m3ret.data.phi import ingest_salt

    given = {"port": args.port, "ae_title": args.ae_title, "spool": args.spool and str(args.spool)}
    cfg = replace(params.listen, **{key: value for key, value in given.items() if value})
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = start_listener(cfg, ingest_salt(params.ingest))
    print(f"listening on {cfg.host}:{cfg.port} as {cfg.ae_title}; spool {cfg.spool}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.ae.shutdown()  # aborts open associations too: a peer that never releases cannot hold the exit
    print("listener stopped")


def cmd_profile(params: Params, args: argparse.Namespace) -> None:
    print(" ".join(f"-S {override}" for override in profile_overrides(args.name)))


COMMANDS = {
    "demo-data": (cmd_demo_data, "build the demo corpus from files that ship with installed packages"),
    "sources": (cmd_sources, "fingerprint every file under ingest.sources (dvc reruns ingest when it changes)"),
    "ingest": (cmd_ingest, "scan sources into data/manifest.parquet; quarantine bad files"),
    "preprocess": (cmd_preprocess, "decode items into sharded model-ready frames"),
    "split": (cmd_split, "group-disjoint pretrain/gallery/query splits"),
    "pretrain": (cmd_pretrain, "self-supervised pretraining (MAE or SimDINO); resumes from the last checkpoint"),
    "embed": (cmd_embed, "frame and series embeddings of every stored frame with the pretrained encoder"),
    "index": (cmd_index, "build the model version's Milvus collection from the embeddings (not yet published)"),
    "search": (cmd_search, "find the items most similar to a file (image, DICOM file or series folder, NIfTI, video)"),
    "evaluate": (cmd_evaluate, "retrieval metrics through the index with baselines; the gate publishes the collection"),
    "drift": (cmd_drift, "Evidently embedding-drift report: current vs reference splits, overall and per modality"),
    "refresh": (cmd_refresh, "index new and changed source files now (a new model is gated and published first)"),
    "listen": (cmd_listen, "receive DICOM instances (C-STORE SCP, C-ECHO) into a spool folder a source ingests"),
    "profile": (cmd_profile, "print a named profile as `dvc exp run` overrides: dvc exp run $(m3ret profile NAME)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m3ret",
        description=__doc__.splitlines()[0],
        epilog="the scheduled flows: m3ret-flows serve --help; the retrieval service: m3ret-serving --help",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name, help=help_text) for name, (_fn, help_text) in COMMANDS.items()}
    commands["profile"].formatter_class = argparse.RawDescriptionHelpFormatter
    commands["profile"].epilog = "profiles (expected wall time):\n" + "\n".join(
        f"  {name:<15} {profile_summary(name)}" for name in profile_names()
    )
    commands["pretrain"].add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    commands["evaluate"].add_argument(
        "--bench", type=Path, default=None, help="only this labeled folder or MedMNIST npz (no gate, no publish)"
    )
    commands["refresh"].add_argument(
        "--state-dir", type=Path, default=Path("data/refresh"), help="ledger and batches (default: data/refresh)"
    )
    search = commands["search"]
    search.add_argument("file", type=Path, help="image, DICOM file or series folder, NIfTI or video")
    search.add_argument("--k", type=int, default=10, help="number of hits (default 10)")
    search.add_argument("--modality", action="append", default=[], help="keep only this modality (repeatable)")
    search.add_argument("--dataset", action="append", default=[], help="keep only this dataset (repeatable)")
    search.add_argument("--level", choices=["frame", "series"], default="series", help="frames or whole series")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--grid", type=Path, default=None, help="write a picture of the query and its hits")
    listen = commands["listen"]
    listen.add_argument("--port", type=int, default=None, help="TCP port (default: listen.port)")
    listen.add_argument("--ae-title", default=None, help="the AE title callers must address (default: listen.ae_title)")
    listen.add_argument("--spool", type=Path, default=None, help="folder received instances go to (listen.spool)")
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
    except (ConfigError, FileNotFoundError, InputError, FilterError, IndexNotReadyError, SourceUnavailableError) as err:
        print(f"m3ret {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
