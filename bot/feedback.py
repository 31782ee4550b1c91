"""Another answer (swipes) and votes on a character's reply, and the preference records they
leave: what the Discord buttons under a reply do, without Discord.

A posted reply gets a *swipe state* in Redis (`<prefix>:swipe:<state id>`, JSON): the prompt
exactly as the model saw it, what the guards and the fallback need to answer it again, the
alternatives so far and which one is shown, and the character's turn as history holds it now.
It expires SWIPE_TTL_SECONDS (30 days) after the reply was posted or last swapped; then the
buttons say so. The state id is made before the reply is posted (the buttons carry it, and the
message id is not known yet).

- `another`: a new sample for the stored prompt (through the Responder: guards, fallback and
  candidates as for any reply), shown in place of the current text;
- `browse`: show the previous or next alternative;
- `vote`: one 👍/👎 per user per message, a second click changes it.

The alternative shown is the one the conversation keeps: each swap replaces the character's
turn in the channel history, only while it is still the newest turn (HistoryStore.replace_last),
so the next reply builds on what the channel shows. Once the conversation has moved on, swaps
are refused; votes are not. Every action upserts one preference record (bot/preferences.py):
`swipe:<message id>` (chosen: the alternative shown, rejected: the others) and
`vote:<message id>:<voter hash>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import redis.asyncio as aioredis

from bot.characters import ADAPTER_WEIGHTS_FILES, CharacterRegistry, adapter_dir, adapter_version
from bot.history import HistoryStore, Turn
from bot.postprocess import split_message
from bot.preferences import PreferenceRecord, PreferenceStore
from bot.responder import Reply, Responder, bare_prompt

log = logging.getLogger(__name__)

SWIPE_TTL_SECONDS = 30 * 24 * 3600  # buttons work this long after the last swap (or the post)
MAX_ALTERNATIVES = 10  # answers per message: bounds the state (each is up to one message)
# Samples per "another answer" before an answer already shown is shown again: a short, likely
# answer ("I love eating!") can come back under a fresh seed, and the same text looks broken.
SWIPE_TRIES = 3
STATE_ID_HEX = 32  # uuid4().hex: the buttons' custom ids carry it (Discord allows 100 chars)

EXPIRED = (
    "These buttons have expired: answers can be swapped and voted on for 30 days "
    "(or the channel's memory was forgotten since)."
)
OTHER_CHANNEL = "These buttons belong to a message in another channel; use them there."
MOVED_ON = "The conversation has moved on; only the latest answer can be swapped."
SPLIT = (
    "This answer was too long for one message, so it can't be swapped in place; votes still work."
)
BUSY = "Another answer for this message is being written right now; one moment."
ENOUGH = (
    f"That's {MAX_ALTERNATIVES} answers for this message already; "
    "browse them with ◀ ▶ and keep the one you like."
)
FIRST = "This is already the first answer."
LAST = "This is already the newest answer; press 🔄 for another one."


def swipe_seed(state_id: str, shown_so_far: int, attempt: int) -> int:
    """A seed of its own for each sample of a message's swipes (the config's fixed seed would
    give the same answer again), reproducible from the message's state."""
    digest = hashlib.sha256(f"{state_id}:{shown_so_far}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class SwipeState:
    """Everything the buttons of one posted reply need, as stored in Redis."""

    id: str
    channel_id: str
    message_id: int  # the message that carries the buttons (the reply's last part)
    webhook_id: int | None  # the webhook that posted it; None: the bot itself
    character_id: str
    prompt: str  # the prompt text exactly as the model saw it
    bare_prompt: str | None  # the same without the card (only when the levers need it)
    message: str  # the user's turn the reply answers, as stored (Turn JSON)
    authors: list[str]  # the speakers the answer must not write for
    said: list[str]  # the character's earlier lines (persona score; only with candidates)
    fallback_seed: int  # the history's length when the prompt was built
    alternatives: list[str]
    shown: int  # index of the alternative the message shows (and history keeps)
    turn: str  # the character's turn as history holds it now (Turn JSON)
    swipeable: bool  # False when the reply was split over several messages
    adapter_version: str  # of the adapter that answered ("" = none)
    created: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> SwipeState:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"malformed swipe state: {exc}") from None

    @property
    def text(self) -> str:
        return self.alternatives[self.shown]

    @property
    def user_turn(self) -> Turn:
        return Turn.from_json(self.message)

    @property
    def character_turn(self) -> Turn:
        return Turn.from_json(self.turn)


@dataclass(frozen=True)
class Refused:
    """The action was not done; `reason` says why, for the user who pressed the button."""

    reason: str


@dataclass(frozen=True)
class Shown:
    """The message now shows `text`, alternative `index` of `count`; history keeps it."""

    text: str
    index: int
    count: int
    character_id: str
    new: bool = False  # a new alternative (False: browsed, or the sample said the same again)
    repeated: bool = False  # the new sample equals an alternative already there


@dataclass(frozen=True)
class Voted:
    up: bool
    previous: bool | None  # the user's earlier vote on this message (None: first vote)
    character_id: str


# Shows an alternative in the channel (edits the message): (text, index, count). Raises if the
# message could not be edited; the swap is then undone.
Show = Callable[[str, int, int], Awaitable[None]]


class FeedbackService:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        registry: CharacterRegistry,
        history: HistoryStore,
        responder: Responder,
        preferences: PreferenceStore,
        characters_dir: Path,
        key_prefix: str = "charbot",
        ttl_seconds: int = SWIPE_TTL_SECONDS,
    ) -> None:
        self.redis = redis
        self.registry = registry
        self.history = history
        self.responder = responder
        self.preferences = preferences
        self.characters_dir = characters_dir
        self.key_prefix = key_prefix
        self.ttl_seconds = ttl_seconds
        # One swap at a time per message (this process answers every button of the bot).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._versions: dict[Path, tuple[tuple[int, int], str]] = {}

    # -- keys and state -------------------------------------------------------------------

    def key(self, state_id: str) -> str:
        return f"{self.key_prefix}:swipe:{state_id}"

    def channel_key(self, channel_id: str | int) -> str:
        """The set of a channel's state ids, so that /forget can remove them."""
        return f"{self.key_prefix}:swipe:channel:{channel_id}"

    @staticmethod
    def new_state_id() -> str:
        return uuid.uuid4().hex

    async def state(self, state_id: str) -> SwipeState | None:
        raw = await self.redis.get(self.key(state_id))
        if raw is None:
            return None
        try:
            return SwipeState.from_json(raw)
        except ValueError as exc:
            log.warning("Ignoring %s: %s", self.key(state_id), exc)
            return None

    async def _save(self, state: SwipeState) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key(state.id), state.to_json(), ex=self.ttl_seconds)
            pipe.sadd(self.channel_key(state.channel_id), state.id)
            pipe.expire(self.channel_key(state.channel_id), self.ttl_seconds)
            await pipe.execute()

    async def _load(self, state_id: str, channel_id: str | int) -> SwipeState | Refused:
        state = await self.state(state_id)
        if state is None:
            return Refused(EXPIRED)
        if state.channel_id != str(channel_id):
            return Refused(OTHER_CHANNEL)
        return state

    def _version(self, character_id: str) -> str:
        """adapter_version of the character's adapter folder, hashed again only when its
        weights file changed (size or modification time)."""
        path = adapter_dir(self.characters_dir, character_id)
        stamp = (0, 0)
        for name in ADAPTER_WEIGHTS_FILES:
            if (path / name).is_file():
                info = (path / name).stat()
                stamp = (info.st_mtime_ns, info.st_size)
                break
        cached = self._versions.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        version = adapter_version(path)
        self._versions[path] = (stamp, version)
        return version

    # -- a reply was posted ---------------------------------------------------------------

    async def posted(
        self,
        state_id: str,
        channel_id: str | int,
        reply: Reply,
        *,
        shown: str,
        message_id: int,
        webhook_id: int | None,
        swipeable: bool,
    ) -> SwipeState:
        """Remember the exchange (the user's message and the answer as `shown`, in one
        transaction, as ChatService.remember does) and the state the reply's buttons use."""
        history = await self.history.recent(channel_id)
        turn = reply.answer_turn(shown)
        await self.history.append(channel_id, reply.message, turn)
        responder = self.responder
        state = SwipeState(
            id=state_id,
            channel_id=str(channel_id),
            message_id=message_id,
            webhook_id=webhook_id,
            character_id=reply.character.id,
            prompt=reply.prompt.text,
            bare_prompt=(
                bare_prompt(reply.prompt, responder.tokenizer) if responder.uses_levers else None
            ),
            message=reply.message.to_json(),
            authors=sorted({reply.message.author, *(t.author for t in history)}),
            said=(
                [t.content for t in history if t.role == "character"]
                if responder.candidates > 1
                else []
            ),
            fallback_seed=len(history),
            alternatives=[shown],
            shown=0,
            turn=turn.to_json(),
            swipeable=swipeable,
            adapter_version=await asyncio.to_thread(self._version, reply.character.id),
        )
        await self._save(state)
        return state

    # -- the buttons ----------------------------------------------------------------------

    def _lock(self, state_id: str) -> asyncio.Lock:
        lock = self._locks.get(state_id)
        if lock is None:
            lock = self._locks[state_id] = asyncio.Lock()
        return lock

    async def check_swap(self, state_id: str, channel_id: str | int) -> SwipeState | Refused:
        """Whether the message's answer can be swapped now (quick: no generation), so that
        a refusal can be the button's immediate answer."""
        if self._lock(state_id).locked():
            return Refused(BUSY)
        return await self._swappable(state_id, channel_id)

    async def _swappable(self, state_id: str, channel_id: str | int) -> SwipeState | Refused:
        state = await self._load(state_id, channel_id)
        if isinstance(state, Refused):
            return state
        if not state.swipeable:
            return Refused(SPLIT)
        if not await self.history.is_last(state.channel_id, state.character_turn):
            return Refused(MOVED_ON)
        return state

    @contextlib.asynccontextmanager
    async def _holding(
        self, state_id: str, channel_id: str | int
    ) -> AsyncIterator[SwipeState | Refused]:
        """The message's state, held against another swap of it until the block ends; or why
        it cannot be swapped now (one is under way, or `_swappable` refuses)."""
        lock = self._lock(state_id)
        if lock.locked():
            yield Refused(BUSY)
            return
        async with lock:
            yield await self._swappable(state_id, channel_id)

    async def another(
        self, state_id: str, channel_id: str | int, show: Show, *, limit: int
    ) -> Shown | Refused:
        """A new answer to the stored prompt, at most `limit` characters (what one message
        shows: an alternative replaces the text of one message), shown with `show`."""
        async with self._holding(state_id, channel_id) as state:
            if isinstance(state, Refused):
                return state
            if len(state.alternatives) >= MAX_ALTERNATIVES:
                return Refused(ENOUGH)
            character = self.registry.get(state.character_id)
            for attempt in range(SWIPE_TRIES):
                sample = await self.responder.answer_again(
                    character,
                    state.prompt,
                    state.user_turn,
                    authors=state.authors,
                    said=state.said,
                    bare=state.bare_prompt,
                    fallback_seed=state.fallback_seed,
                    seed=swipe_seed(state_id, len(state.alternatives), attempt),
                )
                text = (split_message(sample.text, limit) or [character.fallback(0)])[0]
                if text not in state.alternatives:
                    break
            if text in state.alternatives:  # e.g. the guard fallback every time
                index = state.alternatives.index(text)
                if index == state.shown:
                    count = len(state.alternatives)
                    return Shown(text, index, count, state.character_id, repeated=True)
                return await self._swap(state, state.alternatives, index, show, repeated=True)
            alternatives = [*state.alternatives, text]
            return await self._swap(state, alternatives, len(alternatives) - 1, show, new=True)

    async def browse(
        self, state_id: str, channel_id: str | int, step: int, show: Show
    ) -> Shown | Refused:
        """Show the previous (`step` -1) or next (+1) alternative."""
        async with self._holding(state_id, channel_id) as state:
            if isinstance(state, Refused):
                return state
            index = state.shown + step
            if index < 0:
                return Refused(FIRST)
            if index >= len(state.alternatives):
                return Refused(LAST)
            return await self._swap(state, state.alternatives, index, show)

    async def _swap(
        self,
        state: SwipeState,
        alternatives: list[str],
        index: int,
        show: Show,
        *,
        new: bool = False,
        repeated: bool = False,
    ) -> Shown | Refused:
        """Make alternative `index` the one history keeps, show it, then store the state and
        the swipe record. History first: if the conversation moved on meanwhile, nothing
        changes; if the message cannot be edited, history is put back."""
        old = state.character_turn
        turn = replace(old, content=alternatives[index])
        if not await self.history.replace_last(state.channel_id, old, turn):
            return Refused(MOVED_ON)
        try:
            await show(alternatives[index], index, len(alternatives))
        except BaseException:
            if not await self.history.replace_last(state.channel_id, turn, old):
                log.warning("Could not put back the answer in %s's history", state.channel_id)
            raise
        state = replace(state, alternatives=alternatives, shown=index, turn=turn.to_json())
        await self._save(state)
        rejected = tuple(a for i, a in enumerate(alternatives) if i != index)
        await self.preferences.put(
            state.channel_id,
            PreferenceRecord(
                id=f"swipe:{state.message_id}",
                kind="swipe",
                character_id=state.character_id,
                prompt=state.prompt,
                chosen=alternatives[index],
                rejected=rejected,
                adapter_version=state.adapter_version,
            ),
        )
        return Shown(
            alternatives[index], index, len(alternatives), state.character_id, new, repeated
        )

    async def vote(
        self, state_id: str, channel_id: str | int, user_id: str | int, *, up: bool
    ) -> Voted | Refused:
        """The user's vote on the answer the message shows now; a second vote replaces the
        first (one record per user per message, under a pseudonym: never the user id)."""
        state = await self._load(state_id, channel_id)
        if isinstance(state, Refused):
            return state
        voter = await self.preferences.voter_hash(user_id)
        record_id = f"vote:{state.message_id}:{voter}"
        before = await self.preferences.get(state.character_id, record_id)
        await self.preferences.put(
            state.channel_id,
            PreferenceRecord(
                id=record_id,
                kind="vote",
                character_id=state.character_id,
                prompt=state.prompt,
                chosen=state.text if up else None,
                rejected=() if up else (state.text,),
                adapter_version=state.adapter_version,
                voter=voter,
            ),
        )
        previous = None if before is None else before.chosen is not None
        return Voted(up, previous, state.character_id)

    # -- /forget --------------------------------------------------------------------------

    async def remembered_records(self, channel_id: str | int) -> int:
        """How many preference records the channel has made."""
        return int(await self.redis.scard(self.preferences.channel_key(channel_id)))

    async def forget_channel(self, channel_id: str | int) -> int:
        """Remove the channel's preference records and its swipe states (their prompts hold
        the conversation); returns how many preference records were removed."""
        removed = await self.preferences.forget_channel(channel_id)
        state_ids = await self.redis.smembers(self.channel_key(channel_id))
        async with self.redis.pipeline(transaction=True) as pipe:
            for state_id in state_ids:
                pipe.delete(self.key(state_id))
            pipe.delete(self.channel_key(channel_id))
            await pipe.execute()
        return removed
