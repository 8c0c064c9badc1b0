"""One definition of the agent's settings: the CLI options, their help and the docs table come from the model."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import typer.main
from agent_harness import KEYED

from edge_agent import settings_reference
from edge_agent.config import FIELDS, AgentConfigError, AgentSettings, load_settings
from edge_agent.settings_reference import REGENERATE, TABLE_END, TABLE_START, documented_table, settings_table
from feddst_cli import agent_command
from feddst_cli.agent_command import app

PATH_SETTINGS = {"key_file", "coordinator_key_file", "ca_file", "tls_cert_file", "tls_key_file", "data_dir",
                 "kernel_thresholds", "state_dir", "model_onnx_path", "wire_counters_file"}  # str settings, Path flags


def _options() -> dict[str, Any]:
    """The ``feddst agent run`` options by parameter name (typer's own command object)."""
    command = typer.main.get_command(app)  # the app's only command is `run`
    return {p.name: p for p in command.params if p.param_type_name == "option" and p.name != "help"}


def test_the_docs_table_is_the_one_the_model_generates() -> None:
    assert documented_table() == settings_table(), (
        f"docs/agent.md's settings table differs from AgentSettings (edge_agent/setting_fields.py): run `{REGENERATE}`")


def test_the_table_has_one_row_per_setting_with_its_env_and_default() -> None:
    rows = settings_table().splitlines()[2:]
    assert len(rows) == len(FIELDS) == 48
    assert "| `--threads` | `FEDDST_THREADS` | `1` | Torch intra-op threads" in "\n".join(rows)
    assert "| (file/env only) `keepalive_s` | `FEDDST_KEEPALIVE_S` | `30` | MQTT keep-alive, in seconds. |" in rows
    assert any(r.startswith("| `--broker-url` (or `--broker`) | `FEDDST_BROKER_URL`, `FEDDST_BROKER` (deprecated) | "
                            "`mqtt://127.0.0.1:1883` |") for r in rows)


def test_help_texts_say_the_env_variable_and_the_default() -> None:
    assert settings_reference.option_help("heartbeat_s") == (
        "Seconds between retained status heartbeats. Env: FEDDST_HEARTBEAT_S. Default: 5.")
    assert settings_reference.option_help("broker_url").endswith(
        "Env: FEDDST_BROKER_URL (FEDDST_BROKER still works, deprecated). Default: mqtt://127.0.0.1:1883.")
    assert settings_reference.option_help("state_dir").endswith("Default: kept in memory only.")
    assert settings_reference.option_help("insecure_unsigned_coordinator").endswith("Default: off.")
    assert settings_reference.option_help("device_id").endswith("Env: FEDDST_DEVICE_ID. Required.")


def test_the_command_has_exactly_the_settings_flags_with_their_types() -> None:
    options = _options()
    assert options.pop("config").opts == ["--config", "-c"]
    assert set(options) == {name for name in FIELDS if settings_reference.on_command_line(name)}
    assert {name for name in FIELDS if not settings_reference.on_command_line(name)} == {
        "tls_insecure", "keepalive_s", "session_expiry_s", "reconnect_min_s", "reconnect_max_s"}
    hints = typing.get_type_hints(agent_command.run)
    for name, option in options.items():
        main = settings_reference.cli_flags(name)[0].partition("/")[0]
        assert main in option.opts, name
        assert option.help == settings_reference.option_help(name), name
        assert option.default is None, name  # not given: the environment, the file or the default decide
        expected = Path if name in PATH_SETTINGS else FIELDS[name].annotation
        assert hints[name] in (expected | None, typing.Optional[expected]), name  # noqa: UP045
    assert options["broker_url"].opts == ["--broker-url", "--broker"]
    assert "--insecure-accept-unsigned" in options["insecure_unsigned_coordinator"].opts


def test_check_fails_on_a_stale_doc_and_write_repairs_it(tmp_path, capsys) -> None:
    doc = tmp_path / "agent.md"
    doc.write_text(f"# Agent\n\n{TABLE_START}\n| old | table |\n{TABLE_END}\n\nmore text\n")
    assert settings_reference.main(["--check", "--doc", str(doc)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert settings_reference.main(["--write", "--doc", str(doc)]) == 0
    assert settings_reference.main(["--check", "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Agent\n\n") and text.endswith("\n\nmore text\n") and "| old |" not in text


@pytest.mark.parametrize(("flags", "start"), [
    ({"threads": "many"}, "--threads: input should be a valid integer"),
    ({"colour": "blue"}, "unknown setting 'colour'"),
    ({"dataset": "imagenet"}, "--dataset: unknown data source 'imagenet'; choose one of digits, mnist"),
    ({"partition_kind": "random"}, "--partition-kind: unknown partition kind 'random'; choose one of pathological"),
])
def test_type_errors_are_one_line_naming_the_flag(flags, start) -> None:
    with pytest.raises(AgentConfigError) as err:
        load_settings({**KEYED, "device_id": "d", **flags}, environ={})
    message = str(err.value)
    assert message.startswith(start) and "\n" not in message and "pydantic" not in message


def test_paths_are_accepted_and_kept_as_text(tmp_path) -> None:
    settings = AgentSettings(**KEYED, device_id="d", state_dir=tmp_path / "state")
    assert settings.state_dir == str(tmp_path / "state")


def test_direct_construction_ignores_the_environment_and_load_settings_reads_it(monkeypatch) -> None:
    monkeypatch.setenv("FEDDST_THREADS", "7")
    assert AgentSettings(**KEYED, device_id="d").threads == 1  # exactly the values given
    assert load_settings({**KEYED, "device_id": "d"}).threads == 7  # environ=None: os.environ
    with pytest.raises(AgentConfigError, match="^--device-id is required"):
        load_settings({**KEYED}, environ={})
