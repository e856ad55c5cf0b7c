"""`m3ret-serving import` and `m3ret-serving token create|revoke|list`: the retrieval service's set-up.

`import` puts the retrieval model into the BentoML model store; `token create NAME` prints a new bearer token once
(only its hash is kept, in `serve.tokens_file`). Then `bentoml serve serving.service:Retrieval` serves it (README,
"The retrieval service").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from m3ret.config import Params, load_params
from serving.tokens import SCOPES, TokenError, TokenStore


def _import(params: Params, args: argparse.Namespace) -> int:
    from serving.model_store import import_encoder  # BentoML is slow to import: only for this command

    model = Path(params.embed.model)
    if not model.is_file():
        print(f"m3ret-serving import: {model} does not exist: run the pipeline first (dvc repro)", file=sys.stderr)
        return 2
    print(f"imported into the BentoML model store as {import_encoder(model, params)}")
    return 0


def _token(params: Params, args: argparse.Namespace) -> int:
    store = TokenStore(params.serve.tokens_file)
    try:
        if args.action == "create":
            token = store.create(args.name, tuple(args.scope))
            print(f"token {args.name!r} (shown once; only its hash is kept in {store.path}):", file=sys.stderr)
            print(token)
        elif args.action == "revoke":
            store.revoke(args.name)
            print(f"token {args.name!r} revoked")
        else:
            for name, valid in store.names().items():
                print(f"{name}\t{'valid' if valid else 'revoked'}\t{','.join(store.scopes(name)) or '-'}")
    except TokenError as err:
        print(f"m3ret-serving token {args.action}: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m3ret-serving", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("import", help="put embed.model (encoder + readout) into the BentoML model store")
    token = sub.add_parser("token", help="bearer tokens of the service: create NAME, revoke NAME, list")
    token.add_argument("action", choices=["create", "revoke", "list"])
    token.add_argument("name", nargs="?", default="", help="the token's name (create, revoke)")
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        choices=SCOPES,
        help="create: grant a scope (reidentify: hits resolve to their study and a viewer link); repeatable",
    )
    args = parser.parse_args(argv)
    if args.command == "token" and args.action != "list" and not args.name:
        parser.error(f"token {args.action} needs a NAME")
    params = load_params(args.params)
    return {"import": _import, "token": _token}[args.command](params, args)


if __name__ == "__main__":
    sys.exit(main())
