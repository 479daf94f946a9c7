"""`imageserver-operator`: the control plane's command line."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imageserver_operator.api import crds


def _crds(args: argparse.Namespace) -> int:
    generated = {name: crds.to_yaml(crd) for name, crd in crds.all_crds().items()}
    if args.write is None and not args.check:
        print("---\n".join(generated.values()), end="")
        return 0
    directory: Path = args.write or args.check
    stale = []
    for name, text in generated.items():
        path = directory / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(
            "out of date (run `imageserver-operator crds --write crds`): " + ", ".join(stale), file=sys.stderr
        )
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    # Imported here: only `run` should pay for kopf and register the handlers.
    import kopf  # noqa: PLC0415
    from kopf._core.engines import peering  # noqa: PLC0415 (kopf exports no Identity type)

    from imageserver_operator import handlers  # noqa: F401, PLC0415

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kopf").setLevel(logging.WARNING)  # else a line per handled watch event
    os.environ["IMAGESERVER_OPERATOR_RESYNC_SECONDS"] = str(args.resync_seconds)
    os.environ["IMAGESERVER_OPERATOR_LEADER_ELECTION"] = "false" if args.no_leader_election else "true"
    os.environ.setdefault("IMAGESERVER_OPERATOR_NAMESPACE", args.lease_namespace)
    if args.prometheus_url:
        os.environ["IMAGESERVER_OPERATOR_PROMETHEUS_URL"] = args.prometheus_url
    if args.slack_base_url:
        os.environ["IMAGESERVER_OPERATOR_SLACK_BASE_URL"] = args.slack_base_url
    os.environ["IMAGESERVER_OPERATOR_SLO_SECONDS"] = str(args.slo_seconds)
    os.environ["IMAGESERVER_OPERATOR_METRICS_PORT"] = str(args.metrics_port)
    kopf.run(
        standalone=True,  # leadership is a Lease (see leader.py); kopf only watches
        # kopf would name itself after the user, and the image's UID has no passwd entry.
        identity=peering.Identity(f"{socket.gethostname()}/{os.getpid()}"),
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness,
    )
    return 0


def user() -> str:
    """Who runs the command, for the record: also in a container whose UID has no name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _drain(args: argparse.Namespace) -> int:
    from imageserver_operator.adapters.drain import DrainRefused, set_drained  # noqa: PLC0415
    from imageserver_operator.adapters.kube import Kube, api_client  # noqa: PLC0415

    drain = args.command == "drain"
    try:
        after = set_drained(
            Kube(api_client()),
            args.n,
            args.name,
            args.datacenter,
            drain=drain,
            reason=args.reason or f"by hand ({user()})",
        )
    except DrainRefused as why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    print(f"{args.name}: drained datacenters now: {', '.join(sorted(after)) or 'none'}")
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from imageserver_operator.adapters.kube import Kube, api_client  # noqa: PLC0415
    from imageserver_operator.adapters.rollouts import command  # noqa: PLC0415
    from imageserver_operator.core.rollout import Refused  # noqa: PLC0415

    try:
        said = command(Kube(api_client()), args.n, args.name, args.command, f"{user()} (CLI)")
    except Refused as why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    print(f"{args.name}: {said}")
    return 0


def _postmortem_export(args: argparse.Namespace) -> int:
    from imageserver_operator.adapters.kube import Kube, api_client  # noqa: PLC0415
    from imageserver_operator.api.models import PostmortemSpec  # noqa: PLC0415
    from imageserver_operator.core.postmortems import markdown  # noqa: PLC0415

    body = Kube(api_client()).get_postmortem(args.n, args.name)
    print(markdown(args.name, PostmortemSpec.model_validate(body["spec"])), end="")
    return 0


def _postmortem_review(args: argparse.Namespace) -> int:
    import functools  # noqa: PLC0415

    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    from imageserver_operator.adapters.kube import Kube, api_client  # noqa: PLC0415
    from imageserver_operator.core.postmortems import reviewed  # noqa: PLC0415

    status = "InReview" if args.postmortem_command == "review" else "Published"
    change = functools.partial(reviewed, status=status, owner=args.owner)
    try:
        Kube(api_client()).update_postmortem(args.n, args.name, change)
    except ApiException as refused:  # the schema's message: out of order, or no owner
        print(f"error: {refused.status} {refused.reason}: {refused.body}", file=sys.stderr)
        return 1
    print(f"{args.name}: review {status}")
    return 0


def _imageservers(text: str) -> list[dict[str, Any]]:
    """The ImageServers in a YAML stream: documents, and the items of a List (kubectl get -o yaml)."""
    import yaml  # noqa: PLC0415

    found: list[dict[str, Any]] = []
    for document in yaml.safe_load_all(text):
        if not isinstance(document, dict):
            continue
        items = document.get("items") if document.get("kind") == "List" else [document]
        found += [d for d in items or [] if isinstance(d, dict) and d.get("kind") == "ImageServer"]
    return found


def _plan(args: argparse.Namespace) -> int:
    import yaml  # noqa: PLC0415

    from imageserver_operator.api.models import spec_from  # noqa: PLC0415
    from imageserver_operator.api.unit_costs import measured  # noqa: PLC0415
    from imageserver_operator.core import capacity, plan_view  # noqa: PLC0415

    try:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
        found = _imageservers(text)
    except (OSError, yaml.YAMLError) as why:
        print(f"error: cannot read {args.file}: {why}", file=sys.stderr)
        return 2
    if not found:
        print(f"error: no ImageServer in {args.file}", file=sys.stderr)
        return 2
    plans = []
    for document in found:  # all of them planned before anything is printed
        name = str((document.get("metadata") or {}).get("name", "imageserver"))
        try:
            plans.append((name, capacity.plan(spec_from(document.get("spec") or {}), measured())))
        except ValueError as why:  # an invalid spec (pydantic's message) or one it cannot plan
            print(f"error: {name}: {why}", file=sys.stderr)
            return 2
    if args.output == "table":
        print("\n".join(plan_view.table(name, planned) for name, planned in plans), end="")
    else:
        data = [plan_view.data(name, planned) for name, planned in plans]
        if args.output == "json":
            print(json.dumps(data[0] if len(data) == 1 else data, indent=2, allow_nan=False))
        else:
            print(yaml.safe_dump_all(data, sort_keys=False, width=120, explicit_start=len(data) > 1), end="")
    return 1 if args.check and any(planned.short for _, planned in plans) else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="imageserver-operator", description="The ImageServer operator.")
    commands = top.add_subparsers(dest="command", required=True)
    crd = commands.add_parser("crds", help="print the CRDs generated from the models")
    where = crd.add_mutually_exclusive_group()
    where.add_argument("--write", type=Path, metavar="DIR", help="write them into DIR (crds/)")
    where.add_argument("--check", type=Path, metavar="DIR", help="fail when DIR differs from the models")
    crd.set_defaults(func=_crds)

    run = commands.add_parser("run", help="run the operator")
    run.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="watch only this namespace (repeatable); default: the whole cluster",
    )
    run.add_argument("--lease-namespace", default="default", help="namespace of the leader-election Lease")
    run.add_argument(
        "--no-leader-election", action="store_true", help="act without a Lease (one replica only)"
    )
    run.add_argument("--resync-seconds", type=float, default=60.0, help="reconcile everything this often")
    run.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    run.add_argument(
        "--prometheus-url",
        default=os.environ.get("IMAGESERVER_OPERATOR_PROMETHEUS_URL", ""),
        help="watch SLO burn there and remediate; empty: reconcile only",
    )
    run.add_argument("--slo-seconds", type=float, default=15.0, help="SLO evaluation interval")
    run.add_argument("--slack-base-url", default="", help="Slack Web API base URL (default: Slack's)")
    run.add_argument(
        "--metrics-port", type=int, default=0, help="serve the operator's /metrics here (0: off)"
    )
    run.add_argument("--log-level", default="info")
    run.set_defaults(func=_run)

    plan = commands.add_parser(
        "plan", help="the capacity plan (bill of materials) of an ImageServer's spec.capacity"
    )
    plan.add_argument("-f", "--file", type=Path, required=True, help="ImageServer YAML (- for stdin)")
    plan.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    plan.add_argument(
        "--check", action="store_true", help="exit 1 when the spec cannot carry the load it declares"
    )
    plan.set_defaults(func=_plan)

    postmortem = commands.add_parser("postmortem", help="work with Postmortems")
    postmortem_commands = postmortem.add_subparsers(dest="postmortem_command", required=True)
    export = postmortem_commands.add_parser("export", help="print a Postmortem as markdown")
    export.add_argument("name")
    export.add_argument("-n", default="default", metavar="NAMESPACE")
    export.set_defaults(func=_postmortem_export)
    for verb, text in (
        ("review", "move a Postmortem from Draft to InReview (with its owner)"),
        ("publish", "move a Postmortem from InReview to Published (it needs an owner)"),
    ):
        step = postmortem_commands.add_parser(verb, help=text)
        step.add_argument("name")
        step.add_argument("-n", default="default", metavar="NAMESPACE")
        step.add_argument("--owner", default="", help="who finishes it and leads the review")
        step.set_defaults(func=_postmortem_review)

    for verb, text in (
        ("drain", "route no traffic to a datacenter"),
        ("undrain", "route traffic to it again"),
    ):
        sub = commands.add_parser(verb, help=text)
        sub.add_argument("name", help="ImageServer name")
        sub.add_argument("datacenter")
        sub.add_argument("-n", default="default", metavar="NAMESPACE")
        sub.add_argument("--reason", default="", help="recorded in the Event")
        sub.set_defaults(func=_drain)
    for verb, text in (
        ("promote", "take the rollout to its next wave now (an aborted version: roll it out again)"),
        ("abort", "stop the rollout: every datacenter back to the stable version"),
        ("rollback", "every datacenter back to the version before the current one"),
    ):
        sub = commands.add_parser(verb, help=text)
        sub.add_argument("name", help="ImageServer name")
        sub.add_argument("-n", default="default", metavar="NAMESPACE")
        sub.set_defaults(func=_rollout)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
