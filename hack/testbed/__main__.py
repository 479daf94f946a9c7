"""`python -m testbed {build,up,down,status,gateway-api}`: the Makefile's cluster targets."""

from __future__ import annotations

import argparse
import sys

from testbed import cluster, tools
from testbed.processes import StartError
from testbed.progress import say


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the cluster's binaries from Go modules (cached)")
    start = sub.add_parser("up", help="start the local cluster, or reuse the running one")
    start.add_argument(
        "--kwok-only",
        action="store_true",
        help="no real nodes (kubelet, containerd): KWOK's simulated ones alone",
    )
    sub.add_parser("down", help="stop the local cluster and remove its state")
    sub.add_parser("status", help="print the running cluster's state")
    sub.add_parser("gateway-api", help="install the Gateway API CRDs into the running cluster")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for binary, path in tools.build_all().items():
                print(f"{binary:<26}{path}")
        elif args.command == "up":
            print(cluster.describe(cluster.up(real_nodes=not args.kwok_only)))
        elif args.command == "down":
            cluster.down()
        else:
            running = cluster.running()
            if running is None:
                say("no cluster is running: `make cluster-up` starts one")
                return 1
            if args.command == "status":
                print(cluster.describe(running))
            else:
                for name in cluster.install_gateway_api(running):
                    print(f"customresourcedefinition/{name} established")
    except (tools.ToolError, StartError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
