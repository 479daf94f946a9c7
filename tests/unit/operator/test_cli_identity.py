"""The CLI and the operator run as UID 65532 in the image, which has no passwd entry."""

from __future__ import annotations

import getpass
import os

import pytest

from imageserver_operator import cli


def test_the_cli_names_its_user_also_where_the_uid_has_no_passwd_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`kubectl exec … imageserver-operator drain` records who, and must not crash on it."""

    def nameless() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", nameless)
    assert cli.user() == f"uid {os.getuid()}"
