"""TLS on Thrift listeners, with Python's TSSLSocket: server authentication,
client certificates (mTLS), a client that trusts another CA, a plaintext
client on a TLS port, and certificate reload (SIGHUP and changed files)
without dropping the connections already open."""

import shutil
import signal
import socket
import ssl

import pytest

from harness import TTransport, make_pki, thrift_client, wait_for
from test_transports import metric


@pytest.fixture
def pki(short_tmp):
    d = make_pki(short_tmp, servers=("server", "server2"), clients=("client",))
    make_pki(short_tmp, ca="otherca", servers=("impostor",), clients=("stranger",))
    return d


def tls_listener(pki, mtls=False, cert="server"):
    settings = {"tls_cert": str(pki / "live.pem"), "tls_key": str(pki / "live.key")}
    shutil.copy(pki / f"{cert}.pem", pki / "live.pem")
    shutil.copy(pki / f"{cert}.key", pki / "live.key")
    if mtls:
        settings["tls_client_ca"] = str(pki / "ca.pem")
    return {"echo": settings}


def peer_cn(dp, pki):
    """The CN of the certificate the listener presents now."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with socket.create_connection(dp.addr("echo"), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            return subject["commonName"]


def closed_tls_errors(dp):
    return metric(dp, "thriftworker_listener_connections_closed_total", listener="echo", reason="tls_error")


@pytest.mark.parametrize("transport", ["framed", "buffered", "header"])
def test_tls_clients_of_each_transport(dataplane, worker, pki, transport):
    dp = dataplane(listeners=tls_listener(pki))
    worker()
    tls = {"ca_certs": str(pki / "ca.pem")}
    with thrift_client(dp.addr("echo"), "compact", transport=transport, tls=tls) as client:
        for i in range(3):
            assert client.echo(f"tls {transport} {i}") == f"tls {transport} {i}"


def test_mtls_needs_a_client_certificate_from_the_ca(dataplane, worker, pki):
    dp = dataplane(listeners=tls_listener(pki, mtls=True))
    worker()
    good = {"ca_certs": str(pki / "ca.pem"), "certfile": str(pki / "client.pem"), "keyfile": str(pki / "client.key")}
    with thrift_client(dp.addr("echo"), "binary", tls=good) as client:
        assert client.echo("mutual") == "mutual"
    for bad in (
        {"ca_certs": str(pki / "ca.pem")},  # no client certificate
        {"ca_certs": str(pki / "ca.pem"), "certfile": str(pki / "stranger.pem"), "keyfile": str(pki / "stranger.key")},
    ):
        before = closed_tls_errors(dp)
        with pytest.raises((TTransport.TTransportException, ssl.SSLError, OSError)):
            with thrift_client(dp.addr("echo"), "binary", tls=bad, timeout=5) as client:
                client.echo("refused")
        wait_for(lambda: closed_tls_errors(dp) == before + 1, 5, "the refused handshake counted as tls_error")
    assert dp.alive()


def test_a_client_that_trusts_another_ca_refuses_the_listener(dataplane, worker, pki):
    dp = dataplane(listeners=tls_listener(pki))
    worker()
    with pytest.raises((TTransport.TTransportException, ssl.SSLError)):
        with thrift_client(dp.addr("echo"), "binary", tls={"ca_certs": str(pki / "otherca.pem")}, timeout=5) as c:
            c.echo("never")
    wait_for(lambda: closed_tls_errors(dp) == 1, 5, "the aborted handshake counted as tls_error")


def test_plaintext_on_a_tls_port_is_closed_and_counted(dataplane, worker, pki):
    dp = dataplane(listeners=tls_listener(pki))
    worker()
    with pytest.raises(TTransport.TTransportException):
        with thrift_client(dp.addr("echo"), "binary", timeout=5) as client:
            client.echo("plain")
    wait_for(lambda: closed_tls_errors(dp) == 1, 5, "the plaintext client counted as tls_error")
    assert dp.alive()


def test_certificate_reload_on_sighup_and_on_change_keeps_connections(dataplane, worker, pki):
    dp = dataplane(listeners=tls_listener(pki))
    worker()
    assert peer_cn(dp, pki) == "server"
    tls = {"ca_certs": str(pki / "ca.pem")}
    with thrift_client(dp.addr("echo"), "binary", tls=tls) as old:
        assert old.echo("before") == "before"

        # SIGHUP: new connections get the new certificate.
        shutil.copy(pki / "server2.pem", pki / "live.pem")
        shutil.copy(pki / "server2.key", pki / "live.key")
        dp.terminate(signal.SIGHUP)
        wait_for(lambda: 'why="SIGHUP"' in dp.stderr, 10, "the reload on SIGHUP", dp.tail)
        assert peer_cn(dp, pki) == "server2"
        assert old.echo("still open") == "still open"

        # A broken file: the reload fails, the current certificate stays.
        (pki / "live.key").write_text("not a key")
        wait_for(lambda: metric(dp, "thriftworker_listener_tls_reload_failures_total", listener="echo") >= 1,
                 10, "the failed reload counted", dp.tail)
        assert peer_cn(dp, pki) == "server2"
        assert "TLS certificate reload failed" in dp.stderr

        # Files changed on disk, no signal: picked up by the watch.
        shutil.copy(pki / "server.pem", pki / "live.pem")
        shutil.copy(pki / "server.key", pki / "live.key")
        wait_for(lambda: peer_cn(dp, pki) == "server", 10, "the changed files reloaded", dp.tail)
        assert old.echo("after") == "after"
    assert metric(dp, "thriftworker_listener_tls_reloads_total", listener="echo") >= 2
    assert dp.alive()


def test_tls_settings_are_checked_and_shown(dataplane, worker, thriftctl, pki):
    dp = dataplane(listeners=tls_listener(pki, mtls=True))
    ctl = thriftctl(dp)
    listeners = {entry["name"]: entry for entry in ctl.ok("listeners", "list")["listeners"]}
    assert listeners["echo"]["settings"]["tls_client_ca"] == str(pki / "ca.pem")
    assert listeners["mux"]["settings"]["tls_cert"] == ""
    r = ctl.run("--output", "table", "listeners", "list")
    assert r.rc == 0 and "mtls" in r.stdout, r
    # Added at run time, with a key that does not match the certificate: refused, nothing bound.
    r = ctl.run("listeners", "add", "bad", "--address", "127.0.0.1:0", "--service", "Echo",
                "--listener-cert", str(pki / "server.pem"), "--listener-key", str(pki / "client.key"))
    assert r.rc != 0 and "does not go with tls_cert" in r.stderr, r
    r = ctl.run("listeners", "add", "good", "--address", "127.0.0.1:0", "--service", "Echo",
                "--listener-cert", str(pki / "server.pem"), "--listener-key", str(pki / "server.key"))
    assert r.rc == 0, r
