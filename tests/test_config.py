"""Tests for ``mailkeep.config``: value parsers, key checks and where the file comes from."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from mailkeep import config
from mailkeep.config import ConfigError, load, parse_duration, parse_hostport, parse_size


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch, tmp_path):
    """Keep the machine's own config file and environment out of every test."""
    monkeypatch.delenv("MAILKEEP_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent" / "mailkeep.toml")


def write_config(directory: Path, text: str, name: str = "mailkeep.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def raises_naming(key: str):
    """Expect a ConfigError whose message contains ``key``."""
    return pytest.raises(ConfigError, match=re.escape(key))


class TestParseDuration:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("90s", 90.0),
            ("5m", 300.0),
            ("1h", 3600.0),
            ("5d", 432000.0),
            ("2w", 1209600.0),
            ("1.5h", 5400.0),
            ("45", 45.0),
            (" 5 m ", 300.0),
            (30, 30.0),
            (2.5, 2.5),
            (0, 0.0),
        ],
    )
    def test_valid_duration__converts_to_seconds(self, value, seconds):
        assert parse_duration(value, "queue.lifetime") == seconds

    @pytest.mark.parametrize(
        "value", ["5x", "m", "", "5 minutes", "-5s", -5, -0.5, math.nan, True, None]
    )
    def test_invalid_duration__raises_naming_key(self, value):
        with raises_naming("queue.lifetime"):
            parse_duration(value, "queue.lifetime")


class TestParseSize:
    @pytest.mark.parametrize(
        ("value", "size"),
        [
            ("50M", 50 * 1024 * 1024),
            ("512K", 512 * 1024),
            ("512k", 512 * 1024),
            ("1G", 1024**3),
            ("10MiB", 10 * 1024 * 1024),
            ("10mb", 10 * 1024 * 1024),
            ("1000", 1000),
            (10485760, 10485760),
            (0, 0),
        ],
    )
    def test_valid_size__converts_to_bytes(self, value, size):
        assert parse_size(value, "limits.max_message_size") == size

    @pytest.mark.parametrize("value", ["50X", "1.5M", "", "M", "-1", -1, 1.5, True, None])
    def test_invalid_size__raises_naming_key(self, value):
        with raises_naming("limits.max_message_size"):
            parse_size(value, "limits.max_message_size")


class TestParseHostport:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("127.0.0.1:2525", ("127.0.0.1", 2525)),
            ("mx.example.net:25", ("mx.example.net", 25)),
            ("[::1]:25", ("::1", 25)),
            ("[2001:db8::1]:65535", ("2001:db8::1", 65535)),
            (" 0.0.0.0:1 ", ("0.0.0.0", 1)),
        ],
    )
    def test_host_and_port__are_split(self, value, expected):
        assert parse_hostport(value, "listen.smtp") == expected

    @pytest.mark.parametrize("value", ["mx.example.net", "[::1]", "::1"])
    def test_missing_port_with_default__uses_default(self, value):
        _, port = parse_hostport(value, "--server", default_port=25)
        assert port == 25

    @pytest.mark.parametrize("value", ["127.0.0.1", "[::1]", "mx.example.net:"])
    def test_missing_port_without_default__raises_naming_key(self, value):
        with raises_naming("listen.smtp"):
            parse_hostport(value, "listen.smtp")

    @pytest.mark.parametrize("value", ["host:0", "host:65536", "host:smtp", "host:-1", "[::1]:x"])
    def test_invalid_port__raises_naming_key(self, value):
        with raises_naming("listen.smtp"):
            parse_hostport(value, "listen.smtp")


class TestLoadValues:
    def test_sizes_and_durations__are_converted(self, tmp_path):
        path = write_config(tmp_path, """
data_dir = "/srv/mailkeep"
[limits]
max_message_size = "10M"
command_timeout = "5m"
[queue]
lifetime = "2d"
retry_min = 30
""")
        settings = load(str(path))
        assert settings.limits.max_message_size == 10 * 1024 * 1024
        assert settings.limits.command_timeout == 300.0
        assert settings.queue.lifetime == 172800.0
        assert settings.queue.retry_min == 30.0

    def test_single_listen_string__becomes_list(self, tmp_path):
        path = write_config(tmp_path, '[listen]\nsmtp = "127.0.0.1:2525"\n')
        assert load(str(path)).listen.smtp == ["127.0.0.1:2525"]

    def test_listen_list__is_kept(self, tmp_path):
        path = write_config(tmp_path, '[listen]\nsmtp = ["127.0.0.1:2525", "[::1]:2525"]\n')
        assert load(str(path)).listen.smtp == ["127.0.0.1:2525", "[::1]:2525"]

    def test_missing_keys__keep_defaults(self, tmp_path):
        path = write_config(tmp_path, 'hostname = "mx.example.net"\n')
        settings = load(str(path))
        assert settings.hostname == "mx.example.net"
        assert settings.limits.max_recipients == config.Limits().max_recipients

    def test_loaded_settings__record_their_file(self, tmp_path):
        path = write_config(tmp_path, "")
        assert load(str(path)).path == str(path)

    def test_relative_data_dir__is_resolved_against_working_directory(
        self, tmp_path, monkeypatch
    ):
        workdir = tmp_path / "work"
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        path = write_config(tmp_path, 'data_dir = "mailkeep-data"\n')
        settings = load(str(path))
        assert settings.data_dir == str((workdir / "mailkeep-data").resolve())

    def test_absolute_data_dir__is_kept(self, tmp_path):
        path = write_config(tmp_path, 'data_dir = "/srv/mailkeep"\n')
        assert load(str(path)).data_dir == "/srv/mailkeep"

    def test_database__lives_in_data_dir(self, tmp_path):
        path = write_config(tmp_path, 'data_dir = "/srv/mailkeep"\n')
        assert load(str(path)).database == Path("/srv/mailkeep/mailkeep.sqlite3")


class TestLoadErrors:
    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ("colour = 1\n", "'colour'"),
            ("[limits]\nmax_size = 1\n", "'limits.max_size'"),
            ("[smtp]\nport = 25\n", "'smtp'"),
            ('path = "/etc/other.toml"\n', "'path'"),
        ],
    )
    def test_unknown_key__raises_naming_key(self, tmp_path, text, key):
        path = write_config(tmp_path, text)
        with raises_naming(f"unknown setting {key}"):
            load(str(path))

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ("hostname = 5\n", "hostname"),
            ("data_dir = []\n", "data_dir"),
            ('[limits]\nmax_recipients = "many"\n', "limits.max_recipients"),
            ("[limits]\nmax_recipients = -1\n", "limits.max_recipients"),
            ("[limits]\nmax_recipients = true\n", "limits.max_recipients"),
            ("[limits]\nmax_recipients = 1.5\n", "limits.max_recipients"),
            ('[limits]\nmax_message_size = "huge"\n', "limits.max_message_size"),
            ("[limits]\nmax_message_size = -1\n", "limits.max_message_size"),
            ('[queue]\nlifetime = "forever"\n', "queue.lifetime"),
            ("[queue]\nretry_min = -60\n", "queue.retry_min"),
            ('[auth]\nallow_plaintext = "yes"\n', "auth.allow_plaintext"),
            ("[listen]\nsmtp = [25]\n", "listen.smtp"),
            ('[listen]\nsmtp = ["127.0.0.1"]\n', "listen.smtp"),
            ('[tls]\ncert = 1\n', "tls.cert"),
            ('listen = "127.0.0.1:25"\n', "listen"),
        ],
    )
    def test_wrong_type_or_value__raises_naming_key(self, tmp_path, text, key):
        path = write_config(tmp_path, text)
        with raises_naming(key):
            load(str(path))

    def test_invalid_value__names_the_file(self, tmp_path):
        path = write_config(tmp_path, "hostname = 5\n")
        with raises_naming(str(path)):
            load(str(path))

    def test_missing_file__raises_naming_path_and_fix(self, tmp_path):
        missing = tmp_path / "missing.toml"
        with pytest.raises(ConfigError, match="not found") as info:
            load(str(missing))
        assert str(missing) in str(info.value)
        assert "MAILKEEP_CONFIG" in str(info.value)

    def test_invalid_toml__raises(self, tmp_path):
        path = write_config(tmp_path, "hostname = \n")
        with pytest.raises(ConfigError, match="not valid TOML"):
            load(str(path))


class TestConfigFileChoice:
    def test_no_option_no_environment_no_default_file__gives_defaults(self):
        settings = load(None)
        assert settings.path == ""
        assert settings.limits == config.Limits()

    def test_environment_variable__is_read(self, tmp_path, monkeypatch):
        path = write_config(tmp_path, 'hostname = "from-env.example"\n')
        monkeypatch.setenv("MAILKEEP_CONFIG", str(path))
        assert load(None).hostname == "from-env.example"

    def test_option__wins_over_environment_variable(self, tmp_path, monkeypatch):
        env_path = write_config(tmp_path, 'hostname = "from-env.example"\n', "env.toml")
        option_path = write_config(tmp_path, 'hostname = "from-option.example"\n', "opt.toml")
        monkeypatch.setenv("MAILKEEP_CONFIG", str(env_path))
        settings = load(str(option_path))
        assert settings.hostname == "from-option.example"
        assert settings.path == str(option_path)

    def test_environment_variable__wins_over_default_file(self, tmp_path, monkeypatch):
        default = write_config(tmp_path, 'hostname = "from-default.example"\n', "default.toml")
        env_path = write_config(tmp_path, 'hostname = "from-env.example"\n', "env.toml")
        monkeypatch.setattr(config, "DEFAULT_PATH", default)
        monkeypatch.setenv("MAILKEEP_CONFIG", str(env_path))
        assert load(None).hostname == "from-env.example"

    def test_default_file__is_read_when_nothing_else_is_given(self, tmp_path, monkeypatch):
        default = write_config(tmp_path, 'hostname = "from-default.example"\n', "default.toml")
        monkeypatch.setattr(config, "DEFAULT_PATH", default)
        assert load(None).hostname == "from-default.example"

    def test_empty_environment_variable__is_ignored(self, monkeypatch):
        monkeypatch.setenv("MAILKEEP_CONFIG", "")
        assert config.config_path(None) is None

    def test_environment_variable_naming_missing_file__raises(self, tmp_path, monkeypatch):
        monkeypatch.setenv("MAILKEEP_CONFIG", str(tmp_path / "missing.toml"))
        with pytest.raises(ConfigError, match="not found"):
            load(None)
