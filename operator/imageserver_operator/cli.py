"""`imageserver-operator`: the control plane's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from imageserver_operator import crds


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


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="imageserver-operator", description="The ImageServer operator.")
    commands = top.add_subparsers(dest="command", required=True)
    crd = commands.add_parser("crds", help="print the CRDs generated from the models")
    where = crd.add_mutually_exclusive_group()
    where.add_argument("--write", type=Path, metavar="DIR", help="write them into DIR (crds/)")
    where.add_argument("--check", type=Path, metavar="DIR", help="fail when DIR differs from the models")
    crd.set_defaults(func=_crds)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
