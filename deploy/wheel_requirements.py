#!/usr/bin/env python3
"""Print the requirements of a wheel for some extras, one per line, leaving out named packages.

The install scripts install torch first (the CPU wheel, or PyPI's wheel without its NVIDIA
libraries), then the package's *other* dependencies from this list, then the package itself with
``--no-deps``: a plain ``pip install feddst-edge.whl[agent]`` would re-resolve torch's own
dependencies and pull ~2.9 GB of ``nvidia-*`` wheels on aarch64.

    python deploy/wheel_requirements.py dist/feddst_edge-0.1.0-...whl --extra agent --exclude torch

Markers are evaluated for the running interpreter (run it with the target venv's python). Needs
``packaging`` (``pip install packaging``). Exit code 2 with a message for a file that is not a wheel.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


class WheelError(Exception):
    """The file is not a readable wheel (the message names the file and the problem)."""


def wheel_metadata(path: Path) -> str:
    """The text of the wheel's ``*.dist-info/METADATA``."""
    try:
        with zipfile.ZipFile(path) as wheel:
            names = [n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise WheelError(f"{path}: not a wheel (found {len(names)} *.dist-info/METADATA files)")
            return wheel.read(names[0]).decode("utf-8")
    except (OSError, zipfile.BadZipFile) as exc:
        raise WheelError(f"{path}: not a readable wheel ({exc})") from exc


def requirements(metadata: str, extras: list[str], exclude: list[str]) -> list[str]:
    """``Requires-Dist`` entries that apply here with ``extras`` selected, minus ``exclude`` (names)."""
    skip = {canonicalize_name(name) for name in exclude}
    message = Parser().parsestr(metadata)
    own_name = canonicalize_name(message.get("Name", ""))
    chosen: list[str] = []
    for line in message.get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise WheelError(f"bad Requires-Dist {line!r}: {exc}") from exc
        if canonicalize_name(req.name) in skip:
            continue
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in [*extras, ""]):
            continue
        if canonicalize_name(req.name) == own_name:  # e.g. all = ["feddst-edge[cloud,agent]"]
            nested = [e for e in req.extras if e not in extras]
            found = requirements(metadata, [*extras, *nested], exclude) if nested else []
            chosen.extend(text for text in found if text not in chosen)
            continue
        req.marker = None
        text = str(req)
        if text not in chosen:
            chosen.append(text)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="an extra to include (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], help="a package to leave out (repeatable)")
    args = parser.parse_args(argv)
    try:
        lines = requirements(wheel_metadata(args.wheel), args.extra, args.exclude)
    except WheelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
