"""What the container gives the process: the memory limit and CPU quota from its cgroup
(v1 or v2, on the leaf or an ancestor, visible or not), and the share of memory left for
uploads and renders. A limit missed here is a process the kernel kills instead of a 503."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from imageserver.admission import Resources, cpu_limit, memory_limit, work_budget

MiB = 1 << 20
V2 = "0::/kubepods/pod1/c1\n"
V1 = "12:pids:/docker/abc\n4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
V1_UNLIMITED = "9223372036854771712"


def files(contents: dict[str, str]) -> Callable[[str], str | None]:
    """A fake `read`: these paths hold this text, every other path is unreadable."""
    return contents.get


@pytest.mark.parametrize(
    ("cgroup", "contents", "expected"),
    [
        pytest.param(
            V2, {"/sys/fs/cgroup/kubepods/pod1/c1/memory.max": f"{512 * MiB}\n"}, 512 * MiB, id="v2 leaf"
        ),
        pytest.param(
            V2,
            {
                "/sys/fs/cgroup/kubepods/pod1/c1/memory.max": f"{1024 * MiB}\n",
                "/sys/fs/cgroup/kubepods/pod1/memory.max": f"{256 * MiB}\n",
            },
            256 * MiB,
            id="v2 smaller ancestor wins",
        ),
        pytest.param(
            V2,
            {
                "/sys/fs/cgroup/kubepods/pod1/c1/memory.max": f"{128 * MiB}\n",
                "/sys/fs/cgroup/kubepods/memory.max": f"{4096 * MiB}\n",
            },
            128 * MiB,
            id="v2 smaller leaf wins",
        ),
        pytest.param(
            V2,
            {
                "/sys/fs/cgroup/kubepods/pod1/c1/memory.max": "max\n",
                "/sys/fs/cgroup/kubepods/memory.max": f"{2048 * MiB}\n",
            },
            2048 * MiB,
            id="v2 max on leaf, limit above",
        ),
        pytest.param(
            V2,
            {
                "/sys/fs/cgroup/kubepods/pod1/c1/memory.max": "max\n",
                "/sys/fs/cgroup/kubepods/memory.max": "max",
            },
            None,
            id="v2 max everywhere",
        ),
        # With a cgroup namespace the process sees its own cgroup as the root.
        pytest.param(
            "0::/\n", {"/sys/fs/cgroup/memory.max": f"{300 * MiB}\n"}, 300 * MiB, id="v2 namespaced"
        ),
        pytest.param(
            V2, {"/sys/fs/cgroup/memory.max": f"{300 * MiB}\n"}, 300 * MiB, id="v2 leaf mounted as root"
        ),
        pytest.param(V2, {"/sys/fs/cgroup/kubepods/pod1/c1/memory.max": "garbage"}, None, id="v2 unreadable"),
        pytest.param(V2, {}, None, id="v2 nothing readable"),
        pytest.param(
            V1,
            {"/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{256 * MiB}\n"},
            256 * MiB,
            id="v1 leaf",
        ),
        pytest.param(
            V1,
            {
                "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{V1_UNLIMITED}\n",
                "/sys/fs/cgroup/memory/docker/memory.limit_in_bytes": f"{V1_UNLIMITED}\n",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes": f"{V1_UNLIMITED}\n",
            },
            None,
            id="v1 unlimited",
        ),
        pytest.param(
            V1,
            {"/sys/fs/cgroup/memory/memory.limit_in_bytes": f"{192 * MiB}\n"},
            192 * MiB,
            id="v1 leaf mounted as root",
        ),
        pytest.param(
            V1,
            {
                "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": f"{V1_UNLIMITED}\n",
                "/sys/fs/cgroup/memory/docker/memory.limit_in_bytes": f"{640 * MiB}\n",
            },
            640 * MiB,
            id="v1 unlimited leaf, limited parent",
        ),
        pytest.param(V1, {}, None, id="v1 nothing readable"),
        pytest.param("", {"/sys/fs/cgroup/memory.max": f"{300 * MiB}\n"}, None, id="no cgroup file"),
    ],
)
def test_the_memory_limit_is_the_smallest_on_the_cgroup_or_its_ancestors(
    cgroup: str, contents: dict[str, str], expected: int | None
) -> None:
    assert memory_limit(cgroup, files(contents)) == expected


def test_the_cgroup_mount_point_can_be_moved() -> None:
    read = files({"/host/cgroup/kubepods/pod1/c1/memory.max": "1000"})
    assert memory_limit(V2, read, root="/host/cgroup") == 1000
    assert memory_limit(V2, read) is None


@pytest.mark.parametrize(
    ("cgroup", "contents", "expected"),
    [
        pytest.param(V2, {"/sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "150000 100000\n"}, 1.5, id="v2 quota"),
        pytest.param(V2, {"/sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "max 100000\n"}, None, id="v2 no quota"),
        pytest.param(
            V2,
            {
                "/sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "400000 100000\n",
                "/sys/fs/cgroup/kubepods/pod1/cpu.max": "200000 100000\n",
                "/sys/fs/cgroup/kubepods/cpu.max": "max 100000\n",
            },
            2.0,
            id="v2 smaller ancestor wins",
        ),
        pytest.param(V2, {"/sys/fs/cgroup/cpu.max": "50000 100000"}, 0.5, id="v2 leaf mounted as root"),
        pytest.param(V2, {"/sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "150000"}, None, id="v2 malformed"),
        pytest.param(V2, {}, None, id="v2 nothing readable"),
        pytest.param(
            V1,
            {
                "/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us": "200000\n",
                "/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            2.0,
            id="v1 quota",
        ),
        pytest.param(
            V1,
            {
                "/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us": "-1\n",
                "/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us": "100000\n",
            },
            None,
            id="v1 quota -1",
        ),
        pytest.param(
            V1,
            {
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "50000\n",
                "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            },
            0.5,
            id="v1 leaf mounted as root",
        ),
        pytest.param(
            V1, {"/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us": "200000"}, None, id="v1 no period"
        ),
        pytest.param(V1, {}, None, id="v1 nothing readable"),
    ],
)
def test_the_cpu_limit_is_the_tightest_quota_on_the_cgroup_or_its_ancestors(
    cgroup: str, contents: dict[str, str], expected: float | None
) -> None:
    assert cpu_limit(cgroup, files(contents)) == expected


@pytest.mark.parametrize(
    ("limit", "cache", "resident", "expected"),
    [
        pytest.param(1_000_000, 100_000, 50_000, 700_000, id="limit less margin, cache and resident"),
        pytest.param(1_000_000, 0, 0, 850_000, id="a 15 % margin"),
        pytest.param(1001, 0, 0, 850, id="rounded down"),
        pytest.param(1000, 900, 0, -50, id="over-committed: negative, for the caller to refuse"),
    ],
)
def test_the_work_budget_is_the_limit_less_a_margin_the_cache_and_the_process(
    limit: int, cache: int, resident: int, expected: int
) -> None:
    assert work_budget(limit, cache_bytes=cache, resident_now=resident) == expected


def test_this_machine_gives_a_usable_memory_limit_and_cpu_count() -> None:
    found = Resources.discover()
    assert found.memory_limit > 0
    assert found.cpus >= 1
