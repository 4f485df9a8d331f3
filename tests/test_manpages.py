"""Every command has a man page that mandoc accepts and whose options match --help."""

import re
import tomllib

import pytest

from conftest import REPO, need_tools, sh

with open(REPO / "pyproject.toml", "rb") as f:
    COMMANDS = sorted(tomllib.load(f)["project"]["scripts"])

LONG_OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")


OPTION_LINE = re.compile(r"^  (-\S.*?)(?:  |$)")


def help_options(command):
    """Long options from the option lines of --help (not from its examples)."""
    found = set()
    for line in sh(f"{command} --help", check=True).stdout.decode().splitlines():
        match = OPTION_LINE.match(line)
        if match:
            found |= set(LONG_OPTION.findall(match.group(1)))
    return found


def man_options(command):
    text = (REPO / "man" / f"{command}.1").read_text()
    # mdoc spells --name as 'Fl \-name' or '\-\-name'
    flags = re.findall(r"Fl \\-([a-z][a-z0-9-]*)", text) + re.findall(r"\\-\\-([a-z][a-z0-9-]*)", text)
    return set(flags)


@pytest.mark.parametrize("command", COMMANDS)
def test_man_page_exists_and_is_clean(command):
    need_tools("mandoc")
    page = REPO / "man" / f"{command}.1"
    assert page.exists(), f"{command} has no man page"
    result = sh(f"mandoc -Tlint -W warning {page}")
    problems = [line for line in result.stdout.decode().splitlines() + result.stderr_text.splitlines()
                if "WARNING" in line or "ERROR" in line]
    assert not problems, problems


@pytest.mark.parametrize("command", COMMANDS)
def test_man_page_options_match_help(command):
    in_help, in_man = help_options(command), man_options(command)
    assert in_help - in_man == set(), f"in --help but not in man/{command}.1"
    assert in_man - in_help == set(), f"in man/{command}.1 but not in --help"
