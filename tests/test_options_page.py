"""docs/options.md is generated from the config fields, and stays so."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest
from trl import TrlParser

from rlvr_extrap.config import ExtrapGRPOConfig, ExtrapolationArguments

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_options", ROOT / "docs" / "make_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_options = _load_generator()
NAMES = [f.name for f in fields(ExtrapolationArguments)]


def _with_field(name: str, **kwargs) -> type:
    """A copy of ExtrapolationArguments with ``name`` (re)defined by ``field(**kwargs)``, same docstring."""
    namespace = {"__doc__": ExtrapolationArguments.__doc__, "__annotations__": {name: "float"}, name: field(**kwargs)}
    return dataclass(type("Copy", (ExtrapolationArguments,), namespace))


def test_committed_page_is_the_generated_one():
    assert make_options.PAGE.read_text() == make_options.render(), f"run: {make_options.REGENERATE}"
    assert make_options.main(["--check"]) == 0


def test_every_field_has_one_row_a_group_and_a_help():
    page = make_options.PAGE.read_text()
    for name in NAMES:
        assert len(re.findall(rf"^\| `--{name}` \|", page, flags=re.M)) == 1, name
    grouped = [f.name for group in make_options.option_groups().values() for f in group]
    assert sorted(grouped) == sorted(NAMES)
    assert all(f.metadata.get("help") for f in fields(ExtrapolationArguments))
    headings = re.findall(r"^## (.+)$", page, flags=re.M)
    assert headings[1:-1] == list(make_options.option_groups())  # between the common table and the notes


def test_eight_common_options_lead_the_page():
    common = [f.name for f in make_options.common_options()]
    assert len(common) == len(set(common)) == 8
    top = make_options.PAGE.read_text().split("\n## ")[1]
    assert re.findall(r"^\| \[`--(\w+)`\]", top, flags=re.M) == common


def test_the_check_fails_when_a_help_changes(monkeypatch, capsys):
    altered = _with_field("extrap_alpha", default=1.0, metadata={"help": "Scale of the update, said differently."})
    assert make_options.render(altered) != make_options.PAGE.read_text()
    monkeypatch.setattr(make_options, "ExtrapolationArguments", altered)
    assert make_options.main(["--check"]) == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and make_options.REGENERATE in message


def test_a_field_outside_every_group_is_refused():
    added = _with_field("extrap_new_knob", default=0.0, metadata={"help": "A knob no group names."})
    with pytest.raises(ValueError, match=r"in no group \['extrap_new_knob'\]"):
        make_options.render(added)


@pytest.mark.parametrize("name", sorted(make_options.NOTES))
def test_each_note_is_copied_from_its_results_file(name):
    source, text = make_options.NOTES[name]
    assert name in NAMES
    results = (ROOT / source).read_text()
    for number in re.findall(r"\d+(?:\.\d+)?", text):
        assert number in results, f"{number} in the {name} note is not in {source}"


def test_help_strings_hold_no_measurements_and_the_cli_help_prints():
    for f in fields(ExtrapolationArguments):
        assert "benchmarks/results" not in f.metadata["help"] and "measured" not in f.metadata["help"], f.name
    text = TrlParser((ExtrapGRPOConfig,)).format_help()  # argparse %-formats every help string
    assert all(f"--{name}" in text for name in NAMES)


def test_the_page_does_not_depend_on_what_parsed_the_config_before():
    """HfArgumentParser resolves each field's type in place; the page reads the annotations as written."""
    TrlParser((ExtrapGRPOConfig,))
    assert make_options.PAGE.read_text() == make_options.render()
