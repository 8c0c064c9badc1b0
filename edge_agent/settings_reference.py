"""The agent's settings reference, generated from ``AgentSettings``: ``--help`` texts and the docs table.

``option_help(name)`` is the help text of one ``feddst agent run`` option (description, environment
variable, default); ``settings_table()`` the Markdown table of ``docs/agent.md`` between
:data:`TABLE_START` and :data:`TABLE_END`. Regenerate the doc after changing a setting::

    python -m edge_agent.settings_reference --write      # rewrites the table in docs/agent.md
    python -m edge_agent.settings_reference --check      # exit 1 when the doc differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from edge_agent.config import DEPRECATED_NAMES, ENV_PREFIX, FIELDS
from edge_agent.settings_sources import flag_name

DOC = Path(__file__).resolve().parent.parent / "docs" / "agent.md"
REGENERATE = "python -m edge_agent.settings_reference --write"
TABLE_START = f"<!-- settings table: generated from edge_agent/setting_fields.py by `{REGENERATE}` -->"
TABLE_END = "<!-- end of the generated settings table -->"


def _extra(name: str) -> dict[str, Any]:
    extra = FIELDS[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def on_command_line(name: str) -> bool:
    """Whether ``feddst agent run`` has a flag for the setting (else: environment and config file only)."""
    return bool(_extra(name).get("cli", True))


def cli_flags(name: str) -> tuple[str, ...]:
    """The typer parameter declarations of the setting's option, main spelling first."""
    flags = _extra(name).get("flags")
    return tuple(str(f) for f in flags) if isinstance(flags, list) else (flag_name(name),)


def env_variable(name: str) -> str:
    return f"{ENV_PREFIX}{name}".upper()


def _deprecated_env(name: str) -> list[str]:
    return [env_variable(old) for old, new in DEPRECATED_NAMES.items() if new == name]


def default_text(name: str) -> str:
    """How the default reads: the field's ``default_text``, else its value (``off`` for False, 5.0 -> 5)."""
    field: FieldInfo = FIELDS[name]
    text = _extra(name).get("default_text")
    if isinstance(text, str):
        return text
    return _value_text(field.default)


def _value_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def option_help(name: str) -> str:
    """The ``--help`` text of the setting's option: its description, its variable(s) and its default."""
    env = env_variable(name)
    old = _deprecated_env(name)
    if old:
        env += " (" + ", ".join(old) + " still works, deprecated)"
    description = (FIELDS[name].description or "").replace("`", "")
    default = default_text(name)
    return f"{description} Env: {env}. " + ("Required." if default == "required" else f"Default: {default}.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _flag_cell(name: str) -> str:
    if not on_command_line(name):
        return f"(file/env only) `{name}`"
    main, *aliases = cli_flags(name)
    on, _, off = main.partition("/")
    notes = [f"or `{alias}`" for alias in aliases] + ([f"off: `{off}`"] if off else [])
    return f"`{on}`" + (f" ({'; '.join(notes)})" if notes else "")


def _default_cell(name: str) -> str:
    if isinstance(_extra(name).get("default_text"), str) or FIELDS[name].default is None:
        return default_text(name)
    return f"`{default_text(name)}`"


def settings_table() -> str:
    """The Markdown table of every setting, in the model's order (without the markers)."""
    rows = ["| Setting (flag) | Env | Default | Meaning |", "|---|---|---|---|"]
    for name, field in FIELDS.items():
        env = ", ".join(f"`{v}`" for v in (env_variable(name), *_deprecated_env(name)))
        if _deprecated_env(name):
            env += " (deprecated)"
        rows.append(f"| {_flag_cell(name)} | {env} | {_cell(_default_cell(name))} | {_cell(field.description or '')} |")
    return "\n".join(rows)


def documented_table(doc: Path = DOC) -> str | None:
    """The table between the markers in ``doc`` (None: markers missing)."""
    text = doc.read_text(encoding="utf-8")
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        return None
    return text[start + len(TABLE_START):end].strip("\n")


def write_table(doc: Path = DOC) -> None:
    """Replace the table between the markers in ``doc`` with :func:`settings_table`."""
    text = doc.read_text(encoding="utf-8")
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise SystemExit(f"error: {doc} has no {TABLE_START!r} ... {TABLE_END!r} markers; add them where the "
                         "table goes")
    doc.write_text(text[:start + len(TABLE_START)] + "\n" + settings_table() + "\n" + text[end:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The agent's settings table of docs/agent.md, from AgentSettings.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the table in the doc")
    mode.add_argument("--check", action="store_true", help="exit 1 when the doc's table differs")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file (default: docs/agent.md)")
    args = parser.parse_args(argv)
    if args.write:
        write_table(args.doc)
        return 0
    if args.check:
        if documented_table(args.doc) != settings_table():
            print(f"error: the settings table of {args.doc} differs from AgentSettings; run `{REGENERATE}`",
                  file=sys.stderr)
            return 1
        return 0
    print(settings_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
