"""The binary cache: built once per pin, reused, rebuilt when the pin changes, and never
trusted when a build was interrupted. Exercised with a tiny local Go module."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from testbed import tools
from testbed.tools import GoTool, ToolError


def make_tool(root: Path, message: str = "hello") -> GoTool:
    """A wrapper module pinning `example.com/hello v1.2.3`, replaced by a local copy."""
    wrapper = root / "hello"
    source = root / "hello-src"
    (source / "cmd" / "hello").mkdir(parents=True, exist_ok=True)
    (source / "go.mod").write_text("module example.com/hello\n\ngo 1.22\n")
    (source / "cmd" / "hello" / "main.go").write_text(
        f'package main\n\nimport "fmt"\n\nvar version = "dev"\n\n'
        f'func main() {{ fmt.Println("{message}", version) }}\n'
    )
    wrapper.mkdir(exist_ok=True)
    (wrapper / "go.mod").write_text(
        "module wrapper\n\ngo 1.22\n\nrequire example.com/hello v1.2.3\n\n"
        "replace example.com/hello => ../hello-src\n"
    )
    (wrapper / "go.sum").write_text("")
    return GoTool(
        "hello",
        "example.com/hello",
        {"hello": "example.com/hello/cmd/hello"},
        lambda v: [f"-X main.version={v}"],
        root=root,
    )


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESERVER_SRE_CACHE", str(tmp_path / "cache"))


def run(binary: Path) -> str:
    return subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.strip()


def test_a_pin_is_built_once_stamped_and_then_reused(tmp_path: Path) -> None:
    tool = make_tool(tmp_path)
    assert tool.version() == "v1.2.3"
    directory = tools.build(tool)
    assert directory.name.startswith("hello-v1.2.3-")
    assert run(directory / "hello") == "hello v1.2.3"
    built_at = (directory / "hello").stat().st_mtime_ns
    assert tools.build(tool) == directory
    assert (directory / "hello").stat().st_mtime_ns == built_at


def test_a_changed_pin_builds_into_a_new_directory(tmp_path: Path) -> None:
    tool = make_tool(tmp_path)
    first = tools.build(tool)
    go_mod = tool.module_dir / "go.mod"
    go_mod.write_text(go_mod.read_text().replace("v1.2.3", "v1.2.4"))
    second = tools.build(tool)
    assert second != first
    assert run(second / "hello") == "hello v1.2.4"


def test_an_interrupted_build_is_never_taken_for_a_finished_one(tmp_path: Path) -> None:
    tool = make_tool(tmp_path)
    final = tools.tool_dir(tool)
    # What a build killed halfway leaves: the .partial directory, or a final one missing binaries.
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True)
    (partial / "hello").write_bytes(b"truncated")
    final.mkdir()
    assert not tools.is_built(tool)
    directory = tools.build(tool)
    assert not partial.exists()
    assert run(directory / "hello") == "hello v1.2.3"


def test_a_build_error_is_reported_with_the_compiler_output(tmp_path: Path) -> None:
    tool = make_tool(tmp_path, message='hello" + undefinedThing + "')
    with pytest.raises(ToolError, match="undefined: undefinedThing"):
        tools.build(tool)
    assert not tools.is_built(tool)


def test_no_go_toolchain_is_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = make_tool(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolError, match=r"no Go toolchain on PATH.*Go 1\.25 or newer"):
        tools.build(tool)
