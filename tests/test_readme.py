from pathlib import Path

from scripts.config_reference import readme_table, reference_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_commands():
    first_block = README.read_text().split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_configuration_reference_is_current():
    assert readme_table() == reference_table(), "run `.venv/bin/python scripts/config_reference.py --write`"
