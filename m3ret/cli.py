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

import pandas as pd

from m3ret.config import ConfigError, Params, load_params, profile_names

SALT_ENV = "M3RET_ID_SALT"


def _write_json(path: str | Path, data: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _salt(params: Params) -> bytes:
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
    manifest, quarantine = ingest(params.ingest, params.read, _salt(params))
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
        from m3ret.eval.benchmark_folder import benchmark_evaluator, load_benchmark_folder

        bench = load_benchmark_folder(Path(cfg.eval_bench), params.preprocess.size, cache_dir=Path(cfg.eval_cache))
        evaluate = benchmark_evaluator(bench)
    metrics = pretrain(
        cfg, Path(params.preprocess.out), Path(params.split.out), evaluate, cfg.eval_every, max_steps=args.max_steps
    )
    print("pretrain: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" not in k))


def cmd_profile(params: Params, args: argparse.Namespace) -> None:
    from m3ret.config import profile_overrides

    print(" ".join(f"-S {override}" for override in profile_overrides(args.name)))


COMMANDS = {
    "demo-data": (cmd_demo_data, "build the demo corpus from files that ship with installed packages"),
    "ingest": (cmd_ingest, "scan sources into data/manifest.parquet; quarantine bad files"),
    "preprocess": (cmd_preprocess, "decode items into sharded model-ready frames"),
    "split": (cmd_split, "group-disjoint pretrain/gallery/query splits"),
    "pretrain": (cmd_pretrain, "self-supervised pretraining (MAE or SimDINO); resumes from the last checkpoint"),
    "profile": (cmd_profile, "print a named profile as `dvc exp run` overrides: dvc exp run $(m3ret profile NAME)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3ret", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name, help=help_text) for name, (_fn, help_text) in COMMANDS.items()}
    commands["pretrain"].add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    commands["profile"].add_argument("name", help=f"one of: {', '.join(profile_names())}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
        COMMANDS[args.command][0](params, args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"m3ret {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
