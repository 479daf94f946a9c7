"""Where the test bed keeps things: binaries in a per-user cache (outside git, shared by
every checkout), the running cluster's state inside the checkout (`.cluster/`)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / "hack" / "tools"


def cache_dir() -> Path:
    """Build outputs: `$IMAGESERVER_SRE_CACHE`, else `$XDG_CACHE_HOME/imageserver-sre`."""
    explicit = os.environ.get("IMAGESERVER_SRE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "imageserver-sre"


def state_dir() -> Path:
    """The running cluster: pki, etcd data, logs, kubeconfig, the process table."""
    explicit = os.environ.get("IMAGESERVER_SRE_CLUSTER_DIR")
    return Path(explicit) if explicit else REPO_ROOT / ".cluster"
