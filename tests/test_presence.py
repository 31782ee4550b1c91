import pytest

from bot.discord_app.limits import ChannelQueue, Cooldown, NoticeThrottle
from bot.presence import ChannelState, PresenceStore


@pytest.fixture
def presence(redis_connection, key_prefix):
    return PresenceStore(redis_connection.client, key_prefix=key_prefix)


async def test_summon_dismiss_and_order(presence):
    assert await presence.summon(1, "goku")
    assert await presence.summon(1, "vegeta")
    assert not await presence.summon(1, "goku")  # already here
    assert await presence.present(1) == ["goku", "vegeta"]
    assert await presence.present(2) == []
    assert await presence.dismiss(1, "goku")
    assert not await presence.dismiss(1, "goku")
    assert await presence.present(1) == ["vegeta"]


async def test_last_speaker_and_message_authors(presence):
    await presence.summon(1, "goku")
    await presence.spoke(1, "goku", [111, 112])
    assert (await presence.channel_state(1)).last_speaker == "goku"
    assert (await presence.channel_state(1, reply_to_message_id=111)).replied_to == "goku"
    assert (await presence.channel_state(1, reply_to_message_id=999)).replied_to is None
    await presence.dismiss(1, "goku")
    # a dismissed character is not "last"
    assert (await presence.channel_state(1)).last_speaker is None


async def test_channel_state_in_one_read(presence):
    await presence.summon(3, "goku")
    await presence.summon(3, "vegeta")
    await presence.spoke(3, "vegeta", [301])
    state = await presence.channel_state(3, reply_to_message_id=301)
    assert state == ChannelState(["goku", "vegeta"], "vegeta", "vegeta")
    assert await presence.channel_state(4) == ChannelState([], None, None)
    assert (await presence.channel_state(3, reply_to_message_id=999)).replied_to is None


async def test_presence_survives_a_new_store(presence, redis_connection, key_prefix):
    await presence.summon(5, "goku")
    again = PresenceStore(redis_connection.client, key_prefix=key_prefix)
    assert await again.present(5) == ["goku"]


def test_cooldown():
    cooldown = Cooldown(3)
    assert cooldown.retry_after(1, now=100) == 0
    assert cooldown.retry_after(1, now=100.5) == 0  # asking does not start the cooldown
    cooldown.start(1, now=100)
    assert cooldown.retry_after(1, now=101) == pytest.approx(2)
    assert cooldown.retry_after(2, now=101) == 0  # per user
    assert cooldown.retry_after(1, now=103.5) == 0


def test_cooldown_map_stays_bounded():
    cooldown = Cooldown(3)
    for user in range(10_000):
        cooldown.start(user, now=float(user))  # one new user a second, for hours
    assert len(cooldown) <= 4  # only users still cooling down are kept
    assert cooldown.retry_after(9_999, now=10_000.0) == pytest.approx(2)


def test_notice_throttle_once_per_window_and_bounded():
    throttle = NoticeThrottle(10)
    assert throttle.allow("u1", now=0)
    assert not throttle.allow("u1", now=5)
    assert throttle.allow("u2", now=5)  # per key
    assert throttle.allow("u1", now=10.5)
    for n in range(1000):
        throttle.allow(n, now=100.0 + n)
    assert len(throttle) <= 11


def test_channel_queue():
    queue = ChannelQueue(2)
    assert queue.enter(1) and queue.enter(1)
    assert not queue.enter(1)
    assert queue.enter(2)
    queue.leave(1)
    assert queue.depth(1) == 1 and queue.enter(1)
