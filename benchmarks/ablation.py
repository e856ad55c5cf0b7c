"""One row of the pretraining ablation: the pretrain stage with overrides on an existing frame store, the encoder
evaluated on a labeled benchmark before the first step and every epoch under several readouts (plain and whitened).

    python benchmarks/ablation.py --name hybrid --bench ../shared/data/medbench --threads 1 \\
        --set pretrain.epochs=2 --set pretrain.batch_size=32 --set pretrain.optim.lr=0.0005 \\
        --set pretrain.model.name=vit_tiny_r_s16_p8_224 --set pretrain.model.patch_size=2

Frames and splits are the pipeline's (`preprocess.out`, `split.out` of --params, e.g. after
`dvc exp run pretrain $(m3ret profile cpu-60min)`); overrides start from that params file's `pretrain` section.
Writes one JSON line per evaluation to benchmarks/results/ablation/<name>.jsonl (epochs done, minutes since start,
mean and per-dataset mAP@10 per readout) and prints each as it comes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from m3ret.config import PretrainConfig, from_dict, load_params, replace, to_dict
from m3ret.eval.benchmark import evaluate_vectors, gallery_rows, item_means, load_benchmark
from m3ret.models.encoder import Encoder
from m3ret.models.readout import Readout, fit_and_project
from m3ret.train.pretrain_loop import pretrain

READOUTS = ("mean", "cls", "grid", "mean+grid")
OUT = Path(__file__).resolve().parent / "results" / "ablation"


def overridden(section: dict, overrides: list[str]) -> dict:
    """`pretrain.optim.lr=0.0005` style overrides (values parsed as YAML) applied to a copy of `section`."""
    section = json.loads(json.dumps(section))
    for override in overrides:
        key, value = override.split("=", 1)
        *parents, leaf = key.removeprefix("pretrain.").split(".")
        node = section
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise SystemExit(f"--set {override}: no key {leaf!r} in pretrain.{'.'.join(parents)}")
        node[leaf] = yaml.safe_load(value)
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", action="append", default=[], help="pretrain.KEY=VALUE (repeatable)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("models/ablation"), help="checkpoints go below this")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    section = overridden(to_dict(params.pretrain), args.set)
    section.update(out=str(args.work / args.name / "model"), metrics_dir=str(args.work / args.name / "metrics"))
    section.update(eval_bench="", eval_every=0, eval_every_epochs=1.0)
    cfg = from_dict(PretrainConfig, section, "pretrain")
    bench = load_benchmark(args.bench, params.read, params.preprocess, Path(params.pretrain.eval_cache))
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"{args.name}.jsonl"
    log.write_text(json.dumps({"name": args.name, "set": args.set, "threads": args.threads}) + "\n")
    start = time.perf_counter()
    epochs_done = iter(range(10**6))

    def evaluate(encoder: Encoder) -> dict[str, float]:
        # called before the first step and after every epoch (eval_every_epochs=1; the last one at the end)
        row: dict = {"epoch": next(epochs_done), "minutes": round((time.perf_counter() - start) / 60, 2)}
        tokens = torch.cat([t.float().cpu() for t in encoder.token_batches(bench.frames())])  # once for all frames
        has_cls = bool(encoder.vit.has_class_token)
        for pooling in (p for p in READOUTS if has_cls or "cls" not in p):
            readout = Readout(pooling, params.readout.grid, encoder.embed_dim, encoder.num_prefix_tokens, has_cls)
            pooled = torch.cat([readout.pool(chunk) for chunk in tokens.split(1024)])
            for whiten in (False, True):
                cfg = replace(params.readout, pooling=pooling, whiten=whiten)
                vectors = item_means(bench, fit_and_project(readout, cfg, pooled, gallery_rows(bench)).numpy())
                result = evaluate_vectors(vectors, bench)
                name = pooling + (" whitened" if whiten else "")
                row[name] = {"mean": result.mean["mAP@10"], **{d: m["mAP@10"] for d, m in result.per_dataset.items()}}
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{args.name} {row['minutes']:6.1f} min  " + "  ".join(f"{k} {v['mean']:.3f}" for k, v in row.items()
                                                                   if isinstance(v, dict)), flush=True)  # fmt: skip
        return {"mAP@10": row[f"{params.readout.pooling}{' whitened' if params.readout.whiten else ''}"]["mean"]}

    metrics = pretrain(cfg, Path(params.preprocess.out), Path(params.split.out), evaluate)
    with log.open("a") as f:
        f.write(json.dumps({"final": metrics, "minutes": round((time.perf_counter() - start) / 60, 2)}) + "\n")


if __name__ == "__main__":
    main()
