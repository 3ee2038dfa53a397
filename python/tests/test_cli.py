"""thriftworker-py's settings: flag, then THRIFTWORKER_* variable, then the
--config TOML file, then the default; every mistake named."""

from pathlib import Path

import pytest

from thriftworker import cli


def resolved(argv: list[str]) -> object:
    return cli.resolve(cli.parser().parse_args(argv))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for st in cli.SETTINGS:
        monkeypatch.delenv(st.env, raising=False)
    a = resolved(["app:services"])
    assert (a.mode, a.prefetch, a.max_requests, a.log_format) == ("inline", None, 0, "text")  # type: ignore[attr-defined]
    assert a.workers >= 1  # type: ignore[attr-defined]


def test_flag_beats_variable_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for st in cli.SETTINGS:
        monkeypatch.delenv(st.env, raising=False)
    config = tmp_path / "w.toml"
    config.write_text(
        'endpoint = "ipc:///file"\nmode = "threads"\nconcurrency = 3\nworkers = 2\ntargets = ["app:services"]\n'
    )
    a = resolved(["--config", str(config)])
    assert (a.endpoint, a.mode, a.concurrency, a.workers, a.targets) == (  # type: ignore[attr-defined]
        ["ipc:///file"],
        "threads",
        3,
        2,
        ["app:services"],
    )
    monkeypatch.setenv("THRIFTWORKER_CONCURRENCY", "5")
    monkeypatch.setenv("THRIFTWORKER_MODE", "asyncio")
    a = resolved(["--config", str(config), "--mode", "gevent", "other:app"])
    assert (a.mode, a.concurrency, a.targets) == ("gevent", 5, ["other:app"])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "text,message",
    [
        ("bogus = 1\ntargets = ['a:b']", "unknown setting(s) bogus"),
        ("concurrency = 'many'\ntargets = ['a:b']", "concurrency must be an integer"),
        ("mode = 'fibers'\ntargets = ['a:b']", "mode must be one of"),
        ("targets = 'a:b'", "targets must be a list"),
        ("mode = 'inline'", "name at least one TARGET"),
    ],
)
def test_mistakes_in_the_file_are_named(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "w.toml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolved(["--config", str(config)])


def test_a_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THRIFTWORKER_WORKERS", "two")
    with pytest.raises(ValueError, match="THRIFTWORKER_WORKERS must be an integer"):
        resolved(["app:services"])


def test_main_exits_1_with_the_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "w.toml"
    config.write_text("nope = [")
    assert cli.main(["--config", str(config), "--check"]) == 1
    assert cli.main(["--check", "no.such.module:services"]) == 1


def test_endpoints_repeat_or_comma_separate_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for st in cli.SETTINGS:
        monkeypatch.delenv(st.env, raising=False)
    a = resolved(["--endpoint", "tcp://10.0.0.1:9950,tcp://10.0.0.2:9950", "--endpoint", "ipc:///x", "app:s"])
    assert a.endpoint == ["tcp://10.0.0.1:9950", "tcp://10.0.0.2:9950", "ipc:///x"]  # type: ignore[attr-defined]
    monkeypatch.setenv("THRIFTWORKER_WORKER_ENDPOINT", "tcp://dp-a:1, tcp://dp-b:1")
    assert resolved(["app:s"]).endpoint == ["tcp://dp-a:1", "tcp://dp-b:1"]  # type: ignore[attr-defined]
    monkeypatch.delenv("THRIFTWORKER_WORKER_ENDPOINT")
    config = tmp_path / "w.toml"
    config.write_text('endpoint = ["ipc:///a", "ipc:///b,ipc:///c"]\nresolve_interval = 0.5\nhosts_file = "/h"\n')
    a = resolved(["--config", str(config), "app:s"])
    assert (a.endpoint, a.resolve_interval, a.hosts_file) == (  # type: ignore[attr-defined]
        ["ipc:///a", "ipc:///b", "ipc:///c"],
        0.5,
        "/h",
    )
    config.write_text('endpoint = "ipc:///one"\nresolve_interval = 2\n')
    a = resolved(["--config", str(config), "app:s"])
    assert (a.endpoint, a.resolve_interval) == (["ipc:///one"], 2.0)  # type: ignore[attr-defined]
    monkeypatch.setenv("THRIFTWORKER_RESOLVE_INTERVAL", "0.25")
    monkeypatch.setenv("THRIFTWORKER_HOSTS_FILE", "/etc/tw-hosts")
    a = resolved(["--config", str(config), "--resolve-interval", "1.5", "app:s"])
    assert (a.resolve_interval, a.hosts_file) == (1.5, "/etc/tw-hosts")  # type: ignore[attr-defined]
    monkeypatch.delenv("THRIFTWORKER_RESOLVE_INTERVAL")
    monkeypatch.delenv("THRIFTWORKER_HOSTS_FILE")
    assert resolved(["app:s"]).resolve_interval == 5.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "text,message",
    [
        ("endpoint = 5\ntargets = ['a:b']", "endpoint must be a string or a list of strings"),
        ("resolve_interval = 'soon'\ntargets = ['a:b']", "resolve_interval must be a number"),
        ("resolve_interval = nan\ntargets = ['a:b']", "resolve_interval must be a finite number"),
        ("hosts_file = 1\ntargets = ['a:b']", "hosts_file must be a string"),
    ],
)
def test_mistakes_in_the_new_settings_are_named(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "w.toml"
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
        resolved(["--config", str(config)])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--endpoint", "tcp://127.0.0.1"], "needs HOST:PORT"),
        (["--endpoint", "ipc:///x", "--resolve-interval", "0"], "--resolve-interval must be between"),
        (["--endpoint", "ipc:///x", "--hosts-file", "/no/such/hosts"], "cannot read the hosts file /no/such/hosts"),
    ],
)
def test_the_supervisor_refuses_what_its_workers_would(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for st in cli.SETTINGS:
        monkeypatch.delenv(st.env, raising=False)
    with pytest.raises(ValueError, match=message):
        cli.check_attach(cli.resolve(cli.parser().parse_args([*argv, "app:s"])))
