"""Another answer (swipes), browsing and votes on character replies, and the preference records
they leave: the stores and the service on real Redis, then the Discord buttons through
FakeDiscord with the real embedded model (those tests are `model`)."""

from __future__ import annotations

import pytest

from bot.characters import CharacterRegistry
from bot.config import Config
from bot.discord_app.buttons import custom_id, reply_view
from bot.feedback import (
    EXPIRED,
    MOVED_ON,
    OTHER_CHANNEL,
    SPLIT,
    FeedbackService,
    Refused,
    Voted,
    swipe_seed,
)
from bot.generation import GenerationResult
from bot.generation.openai_backend import OpenAIBackend
from bot.history import Turn
from bot.preferences import PreferenceStore
from bot.prompt import build_prompt
from bot.responder import Reply, Responder
from discord_double.fake import FakeDiscord
from tests.bot_fixtures import last_response, summon
from tests.helpers import make_config, user_turn

# -- HistoryStore.replace_last ------------------------------------------------------------------


def test_each_sample_of_a_messages_swipes_has_its_own_seed():
    seeds = {swipe_seed("abc", shown, attempt) for shown in range(10) for attempt in range(3)}
    assert len(seeds) == 30 and all(0 <= s < 2**31 for s in seeds)
    assert swipe_seed("abc", 1, 0) == swipe_seed("abc", 1, 0) != swipe_seed("abd", 1, 0)


async def test_replace_last_only_while_the_turn_is_still_the_newest(history):
    said = Turn(role="character", author="Goku", content="Hi!", character_id="goku")
    other = Turn(role="character", author="Goku", content="Yo!", character_id="goku")
    await history.append("c1", user_turn("hello"), said)
    assert await history.is_last("c1", said)

    assert await history.replace_last("c1", said, other)
    assert [t.content for t in await history.recent("c1")] == ["hello", "Yo!"]
    # `said` is no longer there: nothing changes.
    assert not await history.replace_last("c1", said, other)

    await history.append("c1", user_turn("and then?"))  # the conversation moves on
    assert not await history.replace_last("c1", other, said)
    assert [t.content for t in await history.recent("c1")] == ["hello", "Yo!", "and then?"]
    assert not await history.replace_last("empty", said, other)  # nothing to replace


async def test_replace_last_matches_the_exact_turn_not_just_its_text(history):
    first = Turn(role="character", author="Goku", content="Hi!", character_id="goku", timestamp=1)
    again = Turn(role="character", author="Goku", content="Hi!", character_id="goku", timestamp=2)
    await history.append("c1", first, user_turn("hi"), again)
    assert not await history.replace_last("c1", first, first)  # same words, a later turn
    assert await history.replace_last("c1", again, first)


# -- FeedbackService without the model: votes, refusals, /forget --------------------------------


@pytest.fixture
async def feedback(redis_connection, key_prefix, history, characters_dir, tokenizer):
    """The service on real Redis; its Responder's backend is an OpenAI-compatible one that is
    never asked for text here (votes and refusals need no model)."""
    config: Config = make_config(
        characters_dir=str(characters_dir), backend={"mode": "openai"}, generation={"seed": 0}
    )
    registry = CharacterRegistry.load(characters_dir)
    backend = OpenAIBackend(config, tokenizer)
    responder = Responder(generation=config.generation, cast=registry, backend=backend)
    service = FeedbackService(
        redis=redis_connection.client,
        registry=registry,
        history=history,
        responder=responder,
        preferences=PreferenceStore(redis_connection.client, key_prefix=key_prefix),
        characters_dir=characters_dir,
        key_prefix=key_prefix,
    )
    yield service
    await backend.close()


def a_reply(service: FeedbackService, text: str, content: str = "What do you eat?") -> Reply:
    character = service.registry.get("goku")
    message = user_turn(content, author="alice", character_id="goku")
    prompt = build_prompt(
        character, [], message, tokenizer=service.responder.tokenizer, budget=1536
    )
    return Reply(character, text, prompt, GenerationResult(text, 5, False), message)


async def post(service: FeedbackService, text: str, *, channel="c1", message_id=101, **kwargs):
    state_id = service.new_state_id()
    state = await service.posted(
        state_id,
        channel,
        a_reply(service, text),
        shown=text,
        message_id=message_id,
        webhook_id=None,
        swipeable=kwargs.get("swipeable", True),
    )
    return state


async def test_posted_remembers_the_exchange_and_the_prompt(feedback):
    state = await post(feedback, "Rice! Lots of rice!")
    turns = await feedback.history.recent("c1")
    assert [(t.role, t.content) for t in turns] == [
        ("user", "What do you eat?"),
        ("character", "Rice! Lots of rice!"),
    ]
    stored = await feedback.state(state.id)
    assert stored == state
    assert stored.prompt.startswith("<|im_start|>system") and "What do you eat?" in stored.prompt
    ttl = await feedback.redis.ttl(feedback.key(state.id))
    assert 29 * 24 * 3600 < ttl <= 30 * 24 * 3600  # the buttons work for 30 days


async def test_votes_one_record_per_user_and_message_and_a_second_click_changes_it(feedback):
    state = await post(feedback, "Rice! Lots of rice!")
    prefs = feedback.preferences
    first = await feedback.vote(state.id, "c1", 4242, up=True)
    assert first == Voted(up=True, previous=None, character_id="goku")
    again = await feedback.vote(state.id, "c1", 4242, up=True)
    assert again.previous is True
    changed = await feedback.vote(state.id, "c1", 4242, up=False)
    assert changed.previous is True and changed.up is False

    [record] = await prefs.records("goku")
    voter = await prefs.voter_hash(4242)
    assert record.id == f"vote:101:{voter}" and "4242" not in record.id
    assert record.voter == voter and record.kind == "vote"
    assert record.chosen is None and record.rejected == ("Rice! Lots of rice!",)
    assert record.prompt == state.prompt and record.adapter_version == ""

    await feedback.vote(state.id, "c1", 777, up=True)  # someone else: a record of their own
    records = await prefs.records("goku")
    assert len(records) == 2
    assert {r.chosen for r in records} == {None, "Rice! Lots of rice!"}


async def test_refusals_other_channel_expired_split_and_moved_on(feedback):
    state = await post(feedback, "Rice!")
    assert await feedback.vote(state.id, "c2", 1, up=True) == Refused(OTHER_CHANNEL)
    assert await feedback.check_swap(state.id, "c2") == Refused(OTHER_CHANNEL)
    assert await feedback.vote("0" * 32, "c1", 1, up=True) == Refused(EXPIRED)
    assert await feedback.check_swap(state.id, "c1") == state  # the newest turn: swappable

    await feedback.history.append("c1", user_turn("and dessert?"))
    assert await feedback.check_swap(state.id, "c1") == Refused(MOVED_ON)
    assert isinstance(await feedback.vote(state.id, "c1", 1, up=True), Voted)  # votes still go

    long = await post(feedback, "A long story...", channel="c3", swipeable=False)
    assert await feedback.check_swap(long.id, "c3") == Refused(SPLIT)


async def test_forget_removes_the_channels_records_and_states(feedback):
    here = await post(feedback, "Rice!")
    there = await post(feedback, "Meat!", channel="c2", message_id=202)
    await feedback.vote(here.id, "c1", 1, up=True)
    await feedback.vote(here.id, "c1", 2, up=False)
    await feedback.vote(there.id, "c2", 1, up=True)
    assert await feedback.remembered_records("c1") == 2

    assert await feedback.forget_channel("c1") == 2
    assert await feedback.remembered_records("c1") == 0
    assert await feedback.state(here.id) is None  # its prompt held the conversation
    [kept] = await feedback.preferences.records("goku")
    assert kept.id.startswith("vote:202:")
    assert await feedback.state(there.id) is not None


def test_reply_view_shows_arrows_and_position_once_there_are_two_answers():
    state_id = "a" * 32

    def ids(view):
        return [item.custom_id for item in view.children]

    assert ids(reply_view(state_id)) == [
        custom_id("swipe", state_id),
        custom_id("up", state_id),
        custom_id("down", state_id),
    ]
    browsing = reply_view(state_id, 1, 3)
    assert ids(browsing) == [
        custom_id("prev", state_id),
        f"cb:pos:{state_id}",
        custom_id("next", state_id),
        custom_id("swipe", state_id),
        custom_id("up", state_id),
        custom_id("down", state_id),
    ]
    position = browsing.children[1]
    assert position.label == "2/3" and position.disabled
    first = reply_view(state_id, 0, 2)
    assert first.children[0].item.disabled and not first.children[2].item.disabled
    # Too long for one message: votes only.
    assert ids(reply_view(state_id, swipeable=False)) == [
        custom_id("up", state_id),
        custom_id("down", state_id),
    ]


# -- Through Discord, with the model -------------------------------------------------------------


def button(message: dict, action: str) -> str:
    [found] = [c for c in FakeDiscord.buttons(message) if c.startswith(f"cb:{action}:")]
    return found


async def answered(fake: FakeDiscord, text: str = "What do you like to eat?") -> dict:
    await fake.send_message(text, mentions_bot=True)
    return fake.channel_messages(fake.channel_id)[-1]


async def swipe_records(bot) -> list:
    return [r for r in await bot.services.preferences.records("goku") if r.kind == "swipe"]


async def test_another_answer_swaps_the_text_in_place_and_history_follows(bot, fake):
    await summon(fake)
    answer = await answered(fake)
    first = answer["content"]
    assert [c.split(":")[1] for c in fake.buttons(answer)] == ["swipe", "up", "down"]
    told = len(fake.ephemeral_messages())

    await fake.press(answer["id"], button(answer, "swipe"))
    second = fake.visible_text(answer)
    assert second != first and answer["via"] == "webhook"  # edited through the webhook
    assert last_response(fake)["kind"] == "defer_update"  # the edit is the only answer
    assert len(fake.ephemeral_messages()) == told
    assert [c.split(":")[1] for c in fake.buttons(answer)] == [
        "prev",
        "pos",
        "next",
        "swipe",
        "up",
        "down",
    ]
    position = answer["components"][0]["components"][1]
    assert position["label"] == "2/2"
    turns = await bot.services.history.recent(fake.channel_id)
    assert turns[-1].content == second and len(turns) == 3

    await fake.press(answer["id"], button(answer, "swipe"))
    third = fake.visible_text(answer)
    assert third not in (first, second)  # a fresh seed each time, though the config fixes one
    assert answer["components"][0]["components"][1]["label"] == "3/3"

    await fake.press(answer["id"], button(answer, "prev"))
    await fake.press(answer["id"], button(answer, "prev"))
    assert fake.visible_text(answer) == first
    assert answer["components"][0]["components"][1]["label"] == "1/3"
    assert (await bot.services.history.recent(fake.channel_id))[-1].content == first

    [record] = await swipe_records(bot)  # one record per message, however many swipes
    assert record.id == f"swipe:{answer['id']}"
    assert record.chosen == first and set(record.rejected) == {second, third}
    assert "What do you like to eat?" in record.prompt

    # The next reply builds on the answer shown: it is what history holds.
    await fake.send_message("And after that?", mentions_bot=True)
    turns = await bot.services.history.recent(fake.channel_id)
    assert turns[2].content == first and len(turns) == 5


async def test_votes_through_the_buttons_and_forget_removes_them(bot, fake):
    await summon(fake)
    answer = await answered(fake)
    await fake.press(answer["id"], button(answer, "up"))
    assert fake.ephemeral_messages()[-1] == "Thanks! You voted 👍 on this answer."
    await fake.press(answer["id"], button(answer, "down"))
    assert fake.ephemeral_messages()[-1] == "Vote changed: 👎 (was 👍)."
    await fake.press(answer["id"], button(answer, "up"), user_id=fake.admin_id)

    records = await bot.services.preferences.records("goku")
    mine = await bot.services.preferences.voter_hash(fake.member_id)
    [vote] = [r for r in records if r.voter == mine]  # still exactly one, now changed
    assert vote.id == f"vote:{answer['id']}:{mine}"
    assert vote.chosen is None and vote.rejected == (answer["content"],)
    assert len(records) == 2
    assert fake.visible_text(answer) == answer["content"]  # votes never edit the message

    await fake.slash("forget")
    assert "2 votes and answer choices" in last_response(fake)["content"]
    await fake.click(last_response(fake)["components"][0]["components"][0]["custom_id"])
    assert "2 votes and answer choices removed" in last_response(fake)["content"]
    assert await bot.services.preferences.records("goku") == []


async def test_old_messages_refuse_swaps_but_take_votes_and_other_channels_are_refused(runner):
    fake = FakeDiscord()
    bot = await runner.start(fake, streaming=True, stream_interval=0.5)
    await summon(fake)
    old = await answered(fake)
    # Streamed: the buttons came with the final edit.
    assert [c.split(":")[1] for c in fake.buttons(old)] == ["swipe", "up", "down"]

    other = fake.add_channel()
    await fake.press(old["id"], button(old, "swipe"), channel_id=other)
    assert fake.ephemeral_messages()[-1] == OTHER_CHANNEL
    await fake.press(old["id"], button(old, "up"), channel_id=other)
    assert fake.ephemeral_messages()[-1] == OTHER_CHANNEL

    await answered(fake, "Tell me more!")
    before = await bot.services.history.recent(fake.channel_id)
    edits = list(old["edits"])
    await fake.press(old["id"], button(old, "swipe"))
    refusal = last_response(fake)
    assert refusal["ephemeral"] and refusal["content"] == MOVED_ON
    assert "only the latest answer can be swapped" in MOVED_ON
    assert old["edits"] == edits
    assert await bot.services.history.recent(fake.channel_id) == before

    await fake.press(old["id"], button(old, "up"))
    assert fake.ephemeral_messages()[-1].startswith("Thanks!")
    assert await swipe_records(bot) == []


async def test_buttons_of_an_earlier_run_work_after_a_restart(runner, fake, bot):
    await summon(fake)
    answer = await answered(fake)
    await runner.stop(bot)

    again = await runner.start(fake)  # same Redis, a new process: nothing in memory
    await fake.press(answer["id"], button(answer, "swipe"))
    assert fake.visible_text(answer) != answer["content"]
    turns = await again.services.history.recent(fake.channel_id)
    assert turns[-1].content == fake.visible_text(answer)
    assert len(fake.webhooks_created()) == 1  # edited through the webhook that posted it
    [record] = await swipe_records(again)
    assert record.rejected == (answer["content"],)


async def test_bold_name_fallback_edits_the_bots_own_message(runner):
    fake = FakeDiscord(bot_can_manage_webhooks=False)
    bot = await runner.start(fake)
    await summon(fake)
    answer = await answered(fake)
    assert answer["via"] == "http" and answer["content"].startswith("**Goku**: ")
    assert fake.buttons(answer)

    await fake.press(answer["id"], button(answer, "swipe"))
    shown = fake.visible_text(answer)
    assert shown != answer["content"] and shown.startswith("**Goku**: ")
    turns = await bot.services.history.recent(fake.channel_id)
    assert turns[-1].content == shown.removeprefix("**Goku**: ")  # history has no label
    [record] = await swipe_records(bot)
    assert record.chosen == turns[-1].content


async def test_buttons_off_in_the_config(runner):
    fake = FakeDiscord()
    bot = await runner.start(fake, buttons=False)
    await summon(fake)
    answer = await answered(fake)
    assert answer["components"] == []
    turns = await bot.services.history.recent(fake.channel_id)
    assert turns[-1].content == answer["content"]  # remembered as before
