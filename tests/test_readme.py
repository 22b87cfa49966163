"""The README is a front door and the docs stay true: the two commands first, one screen of what the project is,
and a configuration reference generated from the code."""

from pathlib import Path

from scripts.config_reference import page_table, reference_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_what_it_does_and_the_two_commands_and_fits_a_screen_or_so():
    text = README.read_text()
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    first_screen = "\n".join(text.splitlines()[:15])
    assert "Spark" in first_screen and "make demo" in first_screen
    assert len(text.splitlines()) < 200


def test_configuration_reference_is_current():
    assert page_table() == reference_table(), "run `.venv/bin/python scripts/config_reference.py --write`"
