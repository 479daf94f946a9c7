"""Build the test bed's binaries from official Go modules, once per pin.

Each tool has a wrapper module under `hack/tools/<name>/` whose go.mod and go.sum pin it.
Binaries land in `<cache>/bin/<name>-<version>-<key>/`, where the key hashes go.mod, go.sum
and the build flags: a changed pin builds into a new directory, an unchanged one is reused.
A build writes into a `.partial` directory that is renamed only when every binary is
there, so a killed build never leaves a cache that looks complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from testbed.paths import TOOLS_DIR, cache_dir
from testbed.progress import Progress, say

MIN_GO = (1, 25)


class ToolError(RuntimeError):
    """A build cannot go on; the message says what to do."""


def _k8s_ldflags(version: str) -> list[str]:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    # kubectl reports client-go's version, the servers component-base's: stamp both, as
    # hack/lib/version.sh does in the Kubernetes tree.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return flags


def _helm_kube_version() -> list[str]:
    """The Kubernetes version `helm template` assumes without a cluster, from its client-go,
    as helm's Makefile sets it (unset, helm assumes v1.20 and refuses newer charts)."""
    client_go = pinned_version(TOOLS_DIR / "helm" / "go.mod", "k8s.io/client-go")  # v0.36.2
    minor = client_go.split(".")[1]
    return [
        f"-X helm.sh/helm/v3/pkg/{package}.k8sVersion{part}={value}"
        for package in ("lint/rules", "chartutil")
        for part, value in (("Major", "1"), ("Minor", minor))
    ]


@dataclass(frozen=True)
class GoTool:
    name: str
    module: str  # the pinned module, required by hack/tools/<name>/go.mod
    binaries: Mapping[str, str]  # binary -> main package
    ldflags: Callable[[str], list[str]] = lambda _version: []
    root: Path = TOOLS_DIR
    tags: tuple[str, ...] = ()
    wrapper: str = ""  # the wrapper module's folder, when another tool's (default: the name)
    node: bool = False  # a real node's piece: built only when real nodes are asked for
    on_demand: bool = False  # built only by what runs it (`build`), never by `build_all`

    @property
    def module_dir(self) -> Path:
        return self.root / (self.wrapper or self.name)

    def version(self) -> str:
        return pinned_version(self.module_dir / "go.mod", self.module)


TOOLS: tuple[GoTool, ...] = (
    GoTool(
        "etcd",
        "go.etcd.io/etcd/server/v3",
        {"etcd": "go.etcd.io/etcd/server/v3"},
    ),
    GoTool(
        "kubernetes",
        "k8s.io/kubernetes",
        {
            name: f"k8s.io/kubernetes/cmd/{name}"
            for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
        },
        _k8s_ldflags,
    ),
    # A real node's pieces (see testbed.nodes).
    GoTool(
        "kubernetes-node",
        "k8s.io/kubernetes",
        {name: f"k8s.io/kubernetes/cmd/{name}" for name in ("kubelet", "kube-proxy")},
        _k8s_ldflags,
        wrapper="kubernetes",
        node=True,
    ),
    GoTool(
        "containerd",
        "github.com/containerd/containerd/v2",
        {
            name: f"github.com/containerd/containerd/v2/cmd/{name}"
            for name in ("containerd", "containerd-shim-runc-v2", "ctr")
        },
        lambda v: [f"-X github.com/containerd/containerd/v2/version.Version={v}"],
        # Storage drivers a node here has no use for (and that want cgo).
        tags=("no_btrfs", "no_devmapper", "no_zfs", "urfave_cli_no_docs"),
        node=True,
    ),
    GoTool(
        "coredns",
        "github.com/coredns/coredns",
        {"coredns": "imageserver-sre/hack/tools/coredns"},
        node=True,
    ),
    # The NetworkPolicy engine of the real nodes: its policy controller alone (no routing, no
    # service proxy), run only while a test proves a policy (testbed.nodes.network_policies).
    GoTool(
        "kube-router",
        "github.com/cloudnativelabs/kube-router/v2",
        {"kube-router": "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"},
        lambda v: [f"-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version={v}"],
        node=True,
        on_demand=True,
    ),
    GoTool(
        "kwok",
        "sigs.k8s.io/kwok",
        {"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
        lambda v: [f"-X sigs.k8s.io/kwok/pkg/consts.Version={v.lstrip('v')}"],
    ),
    GoTool(
        "helm",
        "helm.sh/helm/v3",
        {"helm": "helm.sh/helm/v3/cmd/helm"},
        lambda v: [
            f"-X helm.sh/helm/v3/internal/version.version={v}",
            "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
            *_helm_kube_version(),
        ],
    ),
)

# Modules pinned only for the files they ship (CRD manifests, KWOK stages).
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"


def pinned_version(go_mod: Path, module: str) -> str:
    pattern = re.compile(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", re.MULTILINE)
    match = pattern.search(go_mod.read_text())
    if not match:
        raise ToolError(f"{go_mod} does not require {module}")
    return match.group(1)


def go_binary() -> str:
    go = shutil.which("go")
    if go is None:
        raise ToolError(
            "no Go toolchain on PATH: the local cluster is compiled from Kubernetes' Go "
            f"modules and needs Go {'.'.join(map(str, MIN_GO))} or newer. Install Go, put "
            "`go` on PATH and run the command again."
        )
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    match = re.match(r"go(\d+)\.(\d+)", out.stdout.strip())
    if match and (int(match.group(1)), int(match.group(2))) < MIN_GO:
        raise ToolError(
            f"{out.stdout.strip()} is too old to build the pinned Kubernetes release; "
            f"Go {'.'.join(map(str, MIN_GO))} or newer is needed."
        )
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # The wrapper modules pin their toolchain-independent deps; never switch toolchains.
    env.setdefault("GOTOOLCHAIN", "local")
    env["CGO_ENABLED"] = "0"
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=readonly").strip()
    return env


def cache_key(tool: GoTool) -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((tool.module_dir / name).read_bytes())
    for source in sorted(tool.module_dir.glob("*.go")):  # a wrapper's own main (CoreDNS)
        digest.update(source.read_bytes())
    digest.update(json.dumps(tool.ldflags(tool.version())).encode())
    if tool.tags:
        digest.update(json.dumps(tool.tags).encode())
    return digest.hexdigest()[:12]


def tool_dir(tool: GoTool) -> Path:
    return cache_dir() / "bin" / f"{tool.name}-{tool.version()}-{cache_key(tool)}"


def is_built(tool: GoTool) -> bool:
    directory = tool_dir(tool)
    return all(os.access(directory / binary, os.X_OK) for binary in tool.binaries)


def build(tool: GoTool) -> Path:
    """Build one tool into the cache unless this exact pin is there already. Two runs at
    once (two checkouts share the cache) take turns: the second finds it built."""
    final = tool_dir(tool)
    if is_built(tool):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.with_name(final.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if is_built(tool):
            return final
        return _build(tool, final)


def _build(tool: GoTool, final: Path) -> Path:
    go = go_binary()
    partial = final.with_name(final.name + ".partial")
    if partial.exists():  # no other run holds the lock: this one was interrupted
        say(f"removing a half-finished build of {tool.name} left by an interrupted run")
        shutil.rmtree(partial)
    if final.exists():  # present but incomplete: never trust it
        shutil.rmtree(final)
    partial.mkdir(parents=True)
    packages = list(tool.binaries.values())
    env = _go_env()
    total = _count_packages(go, tool, packages, env)
    progress = Progress(f"build {tool.name} {tool.version()}")
    progress.update(f"compiling up to {total} packages", force=True)
    ldflags = " ".join(["-s", "-w", *tool.ldflags(tool.version())])
    compiled = 0
    for binary, package in tool.binaries.items():
        tags = ["-tags", ",".join(tool.tags)] if tool.tags else []
        command = [
            go,
            "build",
            "-v",
            "-trimpath",
            *tags,
            "-ldflags",
            ldflags,
            "-o",
            str(partial / binary),
            package,
        ]
        compiled = _run_with_progress(command, tool, progress, (compiled, total), env)
    partial.rename(final)
    progress.done(", ".join(tool.binaries))
    return final


def _count_packages(go: str, tool: GoTool, packages: list[str], env: dict[str, str]) -> int:
    out = subprocess.run(
        [go, "list", "-deps", *(["-tags", ",".join(tool.tags)] if tool.tags else []), *packages],
        cwd=tool.module_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise ToolError(f"`go list` failed in {tool.module_dir}:\n{out.stderr.strip()}")
    return len(out.stdout.split())


def _run_with_progress(
    command: list[str],
    tool: GoTool,
    progress: Progress,
    counts: tuple[int, int],
    env: dict[str, str],
) -> int:
    """Run `go build -v`, counting the packages it compiles; returns the running count."""
    compiled, total = counts
    tail: list[str] = []
    with subprocess.Popen(command, cwd=tool.module_dir, env=env, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.rstrip()
            tail = [*tail, line][-30:]
            if line and not line.startswith(("#", " ", "\t")):
                compiled += 1
                progress.update(f"{compiled}/{total} packages compiled")
    if proc.returncode != 0:
        raise ToolError(f"`{' '.join(command)}` failed:\n" + "\n".join(tail))
    return compiled


def module_source(tool_name: str, module: str) -> Path:
    """Download (or find in the module cache) a pinned module and return its directory."""
    go = go_binary()
    module_dir = TOOLS_DIR / tool_name
    out = subprocess.run(
        [go, "mod", "download", "-json", module],
        cwd=module_dir,
        env=_go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    info = json.loads(out.stdout or "{}")
    if out.returncode != 0 or "Dir" not in info:
        raise ToolError(f"cannot download {module}: {info.get('Error') or out.stderr.strip()}")
    return Path(info["Dir"])


def tool(name: str) -> GoTool:
    return next(t for t in TOOLS if t.name == name)


def build_all(*, nodes: bool = False) -> dict[str, Path]:
    """Every binary of the test bed (with `nodes`, a real node's too), built if needed:
    name -> path."""
    wanted = [tool for tool in TOOLS if (nodes or not tool.node) and not tool.on_demand]
    missing = [tool for tool in wanted if not is_built(tool)]
    if missing:
        say(
            "building the local cluster from Go modules (once per pin; a cold build takes "
            f"several minutes): {', '.join(t.name for t in missing)}"
        )
    paths: dict[str, Path] = {}
    for tool in wanted:
        directory = build(tool)
        paths.update({binary: directory / binary for binary in tool.binaries})
    return paths
