"""The project's container images, built here as users build them, for the real nodes.

`images/Dockerfile` is built by buildah (no Docker daemon). Its base image comes from no
registry: a Debian root filesystem made by debootstrap, committed under the tag the
Dockerfile names. The pause image is compiled from the pause.c of the pinned Kubernetes
module. Each is built once per content hash into buildah's storage in the cache (outside
git), and imported into a node's containerd only when the node lacks that build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testbed.paths import REPO_ROOT, cache_dir
from testbed.progress import say
from testbed.tools import ToolError, module_source

DOCKERFILE = REPO_ROOT / "images" / "Dockerfile"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"  # the sandbox image containerd 2.2 names; built here
CONTENT_LABEL = "dev.imageserver-sre.content"
# The project's images: Dockerfile target -> repository (tagged with the chart's appVersion).
TARGETS = {
    "operator": "ghcr.io/imageserver-sre/imageserver-operator",
    "imageserver": "ghcr.io/imageserver-sre/imageserver",
}
# What the build copies (images/Dockerfile's COPY lines): a change here is a new image.
SOURCES = ("pyproject.toml", "constraints.txt", "README.md", "imageserver", "operator", "images/Dockerfile")
# The base: Debian's Python (3.11 in bookworm, as the Dockerfile's python:3.11 images).
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
SUITE = "bookworm"
MIRROR = os.environ.get("IMAGESERVER_SRE_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def app_version() -> str:
    chart = (REPO_ROOT / "charts" / "imageserver-operator" / "Chart.yaml").read_text()
    match = re.search(r'^appVersion:\s*"?([^"\s]+)"?', chart, re.MULTILINE)
    if not match:
        raise ToolError("charts/imageserver-operator/Chart.yaml has no appVersion")
    return match.group(1)


def base_image() -> str:
    """The Dockerfile's FROM image, as it names it."""
    match = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    if not match:
        raise ToolError(f"{DOCKERFILE} has no FROM line")
    name = match.group(1)
    return name if "/" in name.split(":")[0] else f"docker.io/library/{name}"


def _buildah_command() -> list[str]:
    return [
        "buildah",
        f"--root={cache_dir() / 'images' / 'storage'}",
        "--runroot=/run/imageserver-sre-buildah",
        "--storage-driver=overlay",
    ]


def _buildah(*args: str, check: bool = True) -> str:
    done = subprocess.run([*_buildah_command(), *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise ToolError(f"buildah {args[0]} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def _label(image: str) -> str | None:
    """The content hash an image was built from, or None when there is no such image."""
    template = f'{{{{index .OCIv1.Config.Labels "{CONTENT_LABEL}"}}}}'
    done = subprocess.run(
        [*_buildah_command(), "inspect", "--type=image", "--format", template, image],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def _commit_scratch(image: str, content: str, add: Path, dest: str, config: list[str]) -> None:
    container = _buildah("from", "scratch")
    try:
        _buildah("add", container, str(add), dest)
        _buildah("config", f"--label={CONTENT_LABEL}={content}", *config, container)
        _buildah("commit", "--quiet", container, image)
    finally:
        _buildah("rm", container, check=False)


def _build_base(image: str) -> None:
    key = _hash([SUITE, MIRROR, *BASE_PACKAGES])
    if _label(image) == key:
        return
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    say(f"making the base image {image} from Debian {SUITE} packages (debootstrap, once)")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        try:
            _debootstrap(debootstrap, rootfs, Path(tmp), image, key)
        finally:  # debootstrap mounts the host's /proc and /dev into it; a failure leaves them
            for mount in ("dev/pts", "dev", "proc", "sys"):
                subprocess.run(["umount", "-l", str(rootfs / mount)], capture_output=True, check=False)


def _debootstrap(debootstrap: str, rootfs: Path, tmp: Path, image: str, key: str) -> None:
    """A Debian root filesystem, trimmed, committed as the base image."""
    done = subprocess.run(
        [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(rootfs),
            MIRROR,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ToolError(f"debootstrap failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    for waste in (
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
    ):
        shutil.rmtree(rootfs / waste, ignore_errors=True)
    tarball = Path(tmp) / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
    _commit_scratch(image, key, tarball, "/", ["--cmd=python3", "--env=LANG=C.UTF-8"])


def _build_pause() -> None:
    source = module_source("kubernetes", "k8s.io/kubernetes") / "build" / "pause" / "linux" / "pause.c"
    key = _hash([source.read_text()])
    if _label(PAUSE_IMAGE) == key:
        return
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        binary = Path(tmp) / "pause"
        done = subprocess.run(
            ["gcc", "-Os", "-static", "-DVERSION=3.10.1", "-o", str(binary), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ToolError(f"compiling pause.c failed: {done.stderr.strip()}")
        _commit_scratch(PAUSE_IMAGE, key, binary, "/pause", ['--entrypoint=["/pause"]', "--user=65535:65535"])


def _hash(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def content_hash() -> str:
    """Of every file the Dockerfile copies (and the Dockerfile): the images' identity."""
    digest = hashlib.sha256()
    for name in SOURCES:
        path = REPO_ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc" or ".egg-info" in str(file):
                continue
            digest.update(str(file.relative_to(REPO_ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def _ca_bundle() -> Path | None:
    """The host's CA bundle: pip in the build trusts what the host trusts (a proxy's CA)."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build() -> dict[str, str]:
    """Every image the real nodes run, built if its content changed: name -> image id."""
    (cache_dir() / "images").mkdir(parents=True, exist_ok=True)
    base = base_image()
    _build_base(base)
    _build_pause()
    # The base's build too: a new base is a new image, even with the same sources.
    content = _hash([content_hash(), _buildah("images", "--quiet", "--no-trunc", base).splitlines()[0]])
    version = app_version()
    stale = False
    for target, repository in TARGETS.items():
        image = f"{repository}:{version}"
        if _label(image) == content:
            continue
        stale = True
        say(f"building {image} from images/Dockerfile (target {target}) with buildah")
        ca = _ca_bundle()
        trust = (
            ["--volume", f"{ca}:/run/build-ca.crt:ro", "--build-arg", "PIP_CERT=/run/build-ca.crt"]
            if ca
            else []
        )
        _buildah(
            "bud",
            "--quiet",
            "--pull-never",
            "--layers",
            *trust,
            f"--label={CONTENT_LABEL}={content}",
            f"--file={DOCKERFILE}",
            f"--target={target}",
            f"--tag={image}",
            str(REPO_ROOT),
        )
    if stale:  # the builds replaced: their layers, and the images they untagged, go
        _buildah("rmi", "--prune", check=False)
    names = [PAUSE_IMAGE, *(f"{repository}:{version}" for repository in TARGETS.values())]
    return {name: _buildah("images", "--quiet", "--no-trunc", name).splitlines()[0] for name in names}


def release(version: str, frontend_env: dict[str, str] | None = None) -> str:
    """The imageserver build tagged as a shop's release `version` (what an ImageServer's
    spec.version names), or with `frontend_env`, a build whose frontends start with those
    settings: a bad release for game days, its storage nodes sound. Returns the image id."""
    built = f"{TARGETS['imageserver']}:{app_version()}"
    image = f"{TARGETS['imageserver']}:{version}"
    source = _buildah("images", "--quiet", "--no-trunc", built).splitlines()[0]
    if not frontend_env:
        _buildah("tag", built, image)
        return source
    settings = " ".join(f"{name}={shlex.quote(value)}" for name, value in sorted(frontend_env.items()))
    # The shell's $1 is the role (`imageserver frontend ...`): only frontends change.
    script = f'if [ "$1" = frontend ]; then export {settings}; fi; exec imageserver "$@"'
    key = _hash([source, script])
    if _label(image) != key:
        container = _buildah("from", "--pull-never", built)
        try:
            entrypoint = json.dumps(["/bin/sh", "-c", script, "imageserver"])
            _buildah("config", f"--label={CONTENT_LABEL}={key}", f"--entrypoint={entrypoint}", container)
            _buildah("commit", "--quiet", container, image)
        finally:
            _buildah("rm", container, check=False)
    return _buildah("images", "--quiet", "--no-trunc", image).splitlines()[0]


def load(nodes: list[tuple[Path, Path]], ctr: Path, extra: dict[str, str] | None = None) -> None:
    """Build the images if needed and import into each node's containerd (socket, root)
    the builds it lacks (and the `extra` images made here: name -> id): a record next to
    its root says which it has."""
    built = {**build(), **(extra or {})}
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        archives: dict[str, Path] = {}

        def has(socket: Path, root: Path, name: str) -> bool:
            record = _record(root)
            listed = subprocess.run(
                [
                    str(ctr),
                    f"--address={socket}",
                    "--namespace=k8s.io",
                    "images",
                    "list",
                    "--quiet",
                    f"name=={name}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            return record.get(name) == built[name] and name in listed.stdout.split()

        work = [
            (socket, root, name) for socket, root in nodes for name in built if not has(socket, root, name)
        ]
        for name in sorted({name for _, _, name in work}):
            path = Path(tmp) / f"{hashlib.sha256(name.encode()).hexdigest()[:12]}.tar"
            _buildah("push", "--quiet", name, f"docker-archive:{path}:{name}")
            archives[name] = path

        def load_one(item: tuple[Path, Path, str]) -> None:
            socket, _, name = item
            done = subprocess.run(
                [
                    str(ctr),
                    f"--address={socket}",
                    "--namespace=k8s.io",
                    "images",
                    "import",
                    str(archives[name]),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise ToolError(
                    f"importing {name} into {socket.stem}'s containerd failed: {done.stderr.strip()}"
                )

        if work:
            say(f"importing {len(work)} image(s) into the real nodes' containerd")
        with ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(load_one, work))
        for socket in {socket for socket, _, _ in work}:
            _release(ctr, socket, set(built.values()))
        for _, root in nodes:
            record = _record(root)
            record.update({name: built[name] for _, done, name in work if done == root})
            (root / "images.json").write_text(json.dumps(record, indent=1))


def _release(ctr: Path, socket: Path, current: set[str]) -> None:
    """Let containerd collect the builds an import replaced, instead of filling the disk build
    after build: the CRI also names each image by its id (which keeps it), and the import
    holds a lease."""
    base = [str(ctr), f"--address={socket}", "--namespace=k8s.io"]
    listed = subprocess.run([*base, "images", "list", "--quiet"], capture_output=True, text=True, check=False)
    stale = [name for name in listed.stdout.split() if name.startswith("sha256:") and name not in current]
    if stale:
        subprocess.run([*base, "images", "delete", *stale], capture_output=True, text=True, check=False)
    leases = subprocess.run([*base, "leases", "list", "--quiet"], capture_output=True, text=True, check=False)
    if leases.stdout.split():
        subprocess.run(
            [*base, "leases", "delete", "--sync", *leases.stdout.split()],
            capture_output=True,
            text=True,
            check=False,
        )


def _record(root: Path) -> dict[str, str]:
    try:
        return dict(json.loads((root / "images.json").read_text()))
    except (OSError, ValueError):
        return {}
