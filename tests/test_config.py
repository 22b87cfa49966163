import datetime as dt
import subprocess
import sys

import pytest

from behavior_spark import cli
from behavior_spark.config import ConfigError, Settings, describe, load_settings


def test_defaults_and_local_yaml_agree_on_types():
    settings = load_settings(cli.DEFAULT_CONF)
    assert isinstance(settings, Settings)
    assert settings.train.num_proc == 2
    assert settings.features.cutoff is None


def test_override_is_parsed_with_the_settings_type():
    settings = load_settings(None, ["train.epochs=5", "train.learning_rate=0.01", "features.cutoff=2026-03-01"])
    assert settings.train.epochs == 5
    assert settings.train.learning_rate == 0.01
    assert settings.features.cutoff == dt.date(2026, 3, 1)


def test_an_integer_is_accepted_where_a_number_is_expected():
    assert load_settings(None, ["train.learning_rate=1"]).train.learning_rate == 1.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("no.such.key=1", "unknown setting 'no.such.key'"),
        ("train.epoch=3", r"unknown setting 'train.epoch'; did you mean 'train.epochs'\?"),
        ("train.epochs=three", "setting 'train.epochs' must be an integer, got 'three'"),
        ("train.epochs=2.5", "setting 'train.epochs' must be an integer"),
        ("train.epochs=0", "setting 'train.epochs' must be positive"),
        ("features.cutoff=yesterday", r"setting 'features.cutoff' must be a date \(YYYY-MM-DD\) or null"),
        ("generate.format=xml", "setting 'generate.format' must be one of csv, json, got 'xml'"),
        ("segment.min_segment_size=0", "setting 'segment.min_segment_size' must be positive, got 0"),
        ("train.threshold=1.5", "setting 'train.threshold' must be less than 1"),
        ("train.resume=1", "setting 'train.resume' must be true or false, got 1"),
        ("segment.k_min=9", r"setting 'segment.k_min' \(9\) must not exceed 'segment.k_max' \(8\)"),
        ("ingest.identity_map=lakehouse/ids", "'ingest.identity_map' .* is inside 'lake.root'"),
        ("features.split_train=0.9", "must be fractions that leave a test split"),
        ("train=3", "setting 'train' must be a section"),
        ("novalue", "--set expects section.key=value"),
    ],
)
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(None, [override])


def test_unknown_key_in_file_is_reported(tmp_path):
    conf = tmp_path / "bad.yaml"
    conf.write_text("train:\n  epochs: 2\n  learnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown setting 'train.learnin_rate'; did you mean 'train.learning_rate'"):
        load_settings(conf)


def test_missing_settings_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="settings file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_cli_exits_2_and_names_the_key(capsys):
    assert cli.main(["ingest", "--set", "no.such.key=1"]) == 2
    assert "no.such.key" in capsys.readouterr().err


def test_console_command_exits_2_and_names_the_key():
    command = [sys.executable, "-m", "behavior_spark", "ingest", "--set", "no.such.key=1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown setting 'no.such.key'" in result.stderr


def test_every_setting_is_described():
    keys = [key for key, _, _ in describe()]
    assert "train.epochs" in keys and "ingest.pseudonym_key_env" in keys
    assert len(keys) == len(set(keys))
