"""The token store: a token is shown once and stored as a hash, revocation is seen by a running store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from serving.tokens import Access, TokenError, TokenStore, Verdict


def test_create_check_revoke(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token = store.create("alice")
    assert token.startswith("m3r_") and len(token) > 40
    assert token not in (tmp_path / "tokens.json").read_text()  # only the hash is kept
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    running = TokenStore(tmp_path / "tokens.json")  # the service's own copy
    assert running.check(token).verdict is Verdict.VALID and running.check("m3r_guess").verdict is Verdict.UNKNOWN
    store.revoke("alice")
    assert running.check(token).verdict is Verdict.REVOKED  # re-read on change, no restart
    assert running.names() == {"alice": False}
    with pytest.raises(TokenError, match="was revoked"):
        store.create("alice")  # names are not reused: the old token stays "revoked", not "unknown"


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    store.create("bob")
    with pytest.raises(TokenError, match="exists"):
        store.create("bob")
    with pytest.raises(TokenError, match="no token named 'carol'"):
        store.revoke("carol")
    with pytest.raises(TokenError, match="letters"):
        store.create("bad name")


def test_the_command_prints_a_token_once_and_lists_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from serving.__main__ import main

    params = tmp_path / "params.yaml"
    params.write_text(f"serve: {{tokens_file: {tmp_path / 'tokens.json'}}}\n")
    assert main(["--params", str(params), "token", "create", "ci"]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenStore(tmp_path / "tokens.json").check(token).verdict is Verdict.VALID
    assert main(["--params", str(params), "token", "revoke", "ci"]) == 0
    assert main(["--params", str(params), "token", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ci\trevoked\t-"
    assert main(["--params", str(params), "token", "revoke", "nobody"]) == 2


def test_scopes_are_granted_at_creation_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    plain, reader = store.create("plain"), store.create("radiologist", ("reidentify",))
    assert store.check(plain).scopes == frozenset()
    assert store.check(reader) == Access(Verdict.VALID, frozenset({"reidentify"}))
    with pytest.raises(TokenError, match="unknown scope"):
        store.create("admin", ("everything",))
    store.revoke("radiologist")
    assert store.check(reader) == Access(Verdict.REVOKED)  # a revoked token keeps no scope

    from serving.__main__ import main

    params = tmp_path / "params.yaml"
    params.write_text(f"serve: {{tokens_file: {tmp_path / 'tokens.json'}}}\n")
    assert main(["--params", str(params), "token", "create", "dr-b", "--scope", "reidentify"]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenStore(tmp_path / "tokens.json").check(token).scopes == frozenset({"reidentify"})
    assert main(["--params", str(params), "token", "list"]) == 0
    assert "dr-b\tvalid\treidentify" in capsys.readouterr().out.splitlines()
