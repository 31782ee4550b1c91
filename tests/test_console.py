"""Console mode: in-process over the real services, and `python -m bot console` from a pipe."""

import io
import os
import subprocess
import sys
import uuid

import pytest

from bot.config import PROJECT_ROOT
from bot.console import Console
from bot.services import open_services


@pytest.fixture
async def services(config, engine, tmp_path):
    # The shared engine; Redis from REDIS_URL or an embedded server in a temp dir.
    test_config = config.model_copy(
        update={
            "data_dir": tmp_path,
            "redis": config.redis.model_copy(update={"url": os.environ.get("REDIS_URL")}),
        }
    )
    services = await open_services(test_config, engine=engine)
    yield services
    await services.close()


async def test_console_chat_commands_and_memory(services):
    channel = f"test-console-{uuid.uuid4().hex[:8]}"
    commands = ["/summon vegita", "/summon kakarot", "/characters", "/bogus", "/forget", "/quit"]
    script = "\n".join(["Hello there!", *commands, "never"]) + "\n"
    out = io.StringIO()
    goku = services.registry.get("goku")
    console = Console(services, goku, stdin=io.StringIO(script), stdout=out, channel_id=channel)
    try:
        await console.run()
        lines = out.getvalue().splitlines()
        assert lines[0] == f"Goku: {goku.greeting}"
        assert lines[1].startswith("Goku: ") and len(lines[1]) > len("Goku: ")
        available = ", ".join(services.registry.ids)
        assert lines[2] == f"(!) No character called 'vegita'; available: {available}"
        assert lines[3] == f"Goku: {goku.greeting}"  # /summon kakarot finds Goku by alias
        listing, rest = lines[4 : 4 + len(services.registry)], lines[4 + len(services.registry) :]
        assert [line.split()[0] for line in listing] == services.registry.ids
        assert rest[0].startswith("(!) Unknown command /bogus.")
        assert rest[1] == "(memory cleared: 4 turns forgotten)"
        assert len(rest) == 2  # /quit ended the chat before "never"
    finally:
        await services.history.clear(channel)


def run_console(data_dir, text: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHARBOT_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("REDIS_URL", None)  # the user's first run: embedded Redis in the data dir
    env.pop("DISCORD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "bot", "console", "goku", "--name", "Tester"],
        input=text,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=300,
        check=False,
    )


def test_piped_console_answers_and_a_second_run_remembers(tmp_path, engine):
    # Reuse the converted model (the `engine` fixture made sure it exists) instead of redoing it.
    (tmp_path / "models").symlink_to(PROJECT_ROOT / ".data" / "models")
    first = run_console(tmp_path, "Hi Goku, who are you?\n")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("Goku: Hey! I'm Goku!")
    # The sampled reply's wording (and line count) depends on the CPU's float arithmetic.
    assert lines[1].startswith("Goku: ") and len(lines[1]) > len("Goku: ")

    second = run_console(tmp_path, "Do you remember me?\n/quit\n")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == "(remembering 3 earlier turns; /forget clears them)"
    assert second.stdout.splitlines()[1].startswith("Goku: ")
    assert "Traceback" not in first.stderr + second.stderr
