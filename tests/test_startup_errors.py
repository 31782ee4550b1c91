"""Start-up failures talking to Discord: one `error:` line, a distinct exit code, no secrets.

`bot.__main__.main` runs in-process with discord.py's real HTTP client. Only Discord's servers
are replaced: `Route.BASE` points at a small local HTTP server that answers like Discord's REST
API (401 for a bad token, 503 or 403 for the command sync), or at a closed local port, where
aiohttp's real connection is refused.

Both `sync` and `discord` are covered: `discord` logs in (HTTP) before `setup_hook` opens Redis
and loads the model, so a failed login never starts the services and these tests stay fast.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from discord.http import Route

from bot.__main__ import (
    EXIT_DISCORD_ERROR,
    EXIT_LOGIN_REFUSED,
    EXIT_UNREACHABLE,
    main,
)

GOOD_TOKEN = "MTA1NzY1NjE4NjE0NTI1NTQ1OA.GxYz12.good-token-for-tests_abcdefghijklmnop"
BAD_TOKEN = "MTA1NzY1NjE4NjE0NTI1NTQ1OA.Gabc34.revoked-token-for-tests_qrstuvwxyz012"
REDIS_PASSWORD = "redis-secret-pw"
APP_ID = "1057656186145255458"


@dataclass
class FakeDiscordApi:
    """Discord's REST API as far as logging in and syncing commands go."""

    sync_status: int = 200
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, auth

    def user(self) -> dict:
        return {
            "id": APP_ID,
            "username": "charbot",
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": True,
        }

    def answer(self, method: str, path: str, auth: str, body: bytes) -> tuple[int, object]:
        self.requests.append((method, path, auth))
        if auth != f"Bot {GOOD_TOKEN}":
            return 401, {"message": "401: Unauthorized", "code": 0}
        if (method, path) == ("GET", "/api/v10/users/@me"):
            return 200, self.user()
        if (method, path) == ("GET", "/api/v10/oauth2/applications/@me"):
            return 200, {
                "id": APP_ID,
                "name": "charbot",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.user(),
                "verify_key": "0" * 64,
                "flags": 0,
            }
        if method == "PUT" and path.startswith(f"/api/v10/applications/{APP_ID}/"):
            if self.sync_status == 200:
                commands = json.loads(body)
                return 200, [
                    {**c, "id": str(i + 1), "application_id": APP_ID, "version": "1"}
                    for i, c in enumerate(commands)
                ]
            if self.sync_status == 403:
                return 403, {"message": "Missing Access", "code": 50001}
            return self.sync_status, {"message": "Service Unavailable", "code": 0}
        return 404, {"message": "404: Not Found", "code": 0}


@pytest.fixture
def discord_api(monkeypatch) -> Iterator[FakeDiscordApi]:
    api = FakeDiscordApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            auth = self.headers.get("Authorization", "")
            status, payload = api.answer(self.command, self.path, auth, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _serve

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(Route, "BASE", f"http://127.0.0.1:{server.server_port}/api/v10")
    yield api
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port(monkeypatch) -> int:
    """Discord's API base on a local port nothing listens on: the connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
    return port


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path):
    # An empty config file: every default, whatever the project's config.yaml holds right now.
    config = tmp_path / "config.yaml"
    config.write_text("{}\n", encoding="utf-8")
    monkeypatch.setenv("CHARBOT_CONFIG", str(config))
    monkeypatch.setenv("CHARBOT_DATA_DIR", str(tmp_path))
    # Never used (a failed login opens no services), but its password must not leak either.
    monkeypatch.setenv("REDIS_URL", f"redis://default:{REDIS_PASSWORD}@127.0.0.1:1/0")


def run_main(monkeypatch, capsys, caplog, token: str, argv: list[str]) -> tuple[int, str, str]:
    monkeypatch.setenv("DISCORD_TOKEN", token)
    caplog.set_level(logging.DEBUG)  # discord.py's request lines are logged too
    code = main(argv)
    out, err = capsys.readouterr()
    everything = out + err + caplog.text
    assert "Traceback" not in everything
    for secret in (token, REDIS_PASSWORD):
        assert secret not in everything
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("argv", [["sync"], ["-v", "sync"], ["discord"]])
def test_refused_token(argv, discord_api, monkeypatch, capsys, caplog):
    code, out, err = run_main(monkeypatch, capsys, caplog, BAD_TOKEN, argv)
    assert code == EXIT_LOGIN_REFUSED == 3, err
    assert one_error_line(err) == (
        "error: Discord refused the bot token: check that DISCORD_TOKEN (environment or .env) "
        "holds the bot's current token from the developer portal (Bot > Reset Token)"
    )
    assert out == ""
    # discord.py really asked the (fake) server, with the token, and was answered 401.
    assert discord_api.requests == [("GET", "/api/v10/users/@me", f"Bot {BAD_TOKEN}")]


@pytest.mark.parametrize("argv", [["sync"], ["discord"]])
def test_discord_unreachable(argv, closed_port, monkeypatch, capsys, caplog):
    code, out, err = run_main(monkeypatch, capsys, caplog, GOOD_TOKEN, argv)
    assert code == EXIT_UNREACHABLE == 4, err
    assert out == ""
    line = one_error_line(err)
    assert line.startswith(
        f"error: cannot reach Discord (Cannot connect to host 127.0.0.1:{closed_port}"
    )
    assert line.endswith(
        "): check the network connection, DNS, firewall or proxy settings, "
        "and https://discordstatus.com"
    )


def test_sync_succeeds_against_the_fake_api(discord_api, monkeypatch, capsys, caplog):
    # The control: with a good token and a healthy API the same path syncs, so the failures
    # below come from Discord's answers, not from the fake.
    code, out, err = run_main(monkeypatch, capsys, caplog, GOOD_TOKEN, ["sync"])
    assert code == 0, err
    assert err == ""
    assert out.startswith("Synced ") and out.endswith(
        " slash commands to all servers (may take up to an hour).\n"
    )
    assert int(out.split()[1]) > 0


def test_sync_server_error(discord_api, monkeypatch, capsys, caplog):
    discord_api.sync_status = 503
    code, out, err = run_main(monkeypatch, capsys, caplog, GOOD_TOKEN, ["sync"])
    assert code == EXIT_DISCORD_ERROR == 5, err
    assert one_error_line(err) == (
        "error: Discord answered with an error (503 Service Unavailable (error code: 0): "
        "Service Unavailable): Discord is having trouble, try again later "
        "(see https://discordstatus.com)"
    )
    assert out == ""


def test_sync_missing_access(discord_api, monkeypatch, capsys, caplog):
    discord_api.sync_status = 403
    code, out, err = run_main(monkeypatch, capsys, caplog, GOOD_TOKEN, ["sync", "--guild", "42"])
    assert code == EXIT_DISCORD_ERROR, err
    assert out == ""
    assert one_error_line(err) == (
        "error: Discord answered with an error (403 Forbidden (error code: 50001): "
        "Missing Access): check the bot's permissions and that it is in the server"
    )
    assert discord_api.requests[-1][:2] == (
        "PUT",
        f"/api/v10/applications/{APP_ID}/guilds/42/commands",
    )


def test_missing_token_is_still_a_config_error(monkeypatch, capsys):
    monkeypatch.setenv("DISCORD_TOKEN", "")  # set, so a developer's .env does not fill it in
    assert main(["sync"]) == 2
    assert capsys.readouterr().err == "error: DISCORD_TOKEN is not set (environment or .env)\n"
