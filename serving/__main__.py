"""`m3ret-serving import [--params params.yaml]`: the retrieval model into the BentoML model store for the service.

Then `bentoml serve serving.service:Retrieval` serves it (README, "The retrieval service").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from m3ret.config import load_params
from serving.model_store import import_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m3ret-serving", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    importer = sub.add_parser("import", help="put embed.model (encoder + readout) into the BentoML model store")
    importer.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    model = Path(params.embed.model)
    if not model.is_file():
        print(f"m3ret-serving import: {model} does not exist: run the pipeline first (dvc repro)", file=sys.stderr)
        return 2
    print(f"imported into the BentoML model store as {import_encoder(model, params)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
