"""The buttons under character replies: 🔄 another answer, ◀ ▶ browse, 👍 👎 votes.

A thin layer over FeedbackService (bot/feedback.py): it answers each press within Discord's
deadline (an ephemeral sentence, or a deferred update followed by the edit of the message)
and edits the reply the way it was posted: through the webhook, or as the bot's own message.
"""

from __future__ import annotations

import logging

import discord

from bot.characters import Character
from bot.discord_app.buttons import ReplyButton, reply_view
from bot.discord_app.client import CharacterBot
from bot.discord_app.cog import ServicesCog
from bot.discord_app.notices import MEMORY_DOWN, STORE_ERRORS
from bot.discord_app.speaker import DELIVERY_ERRORS, Channel, SendFailed, describe
from bot.feedback import Refused, Show, Shown, SwipeState
from bot.generation import BackendUnavailable

log = logging.getLogger(__name__)

BUTTONS_OFF = "Buttons under replies are turned off on this bot."
NOT_EDITED = (
    "I couldn't change that message (it may have been deleted, or I may no longer be "
    "allowed to edit it), so nothing was swapped."
)
FAILED = "Sorry, that didn't work. It has been logged for the admins."


def vote_text(up: bool, previous: bool | None) -> str:
    vote = "👍" if up else "👎"
    if previous is None:
        return f"Thanks! You voted {vote} on this answer."
    if previous == up:
        return f"You had already voted {vote} on this answer; it stays {vote}."
    return f"Vote changed: {vote} (was {'👍' if previous else '👎'})."


class Feedback(ServicesCog):
    async def cog_load(self) -> None:
        # Presses on messages posted by earlier runs arrive here too (persistent buttons).
        self.bot.add_dynamic_items(ReplyButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ReplyButton)

    async def pressed(self, interaction: discord.Interaction, action: str, state_id: str) -> None:
        """One button press; every outcome gets an answer the presser sees."""
        try:
            if not self.bot.config.discord.buttons:
                await self._tell(interaction, BUTTONS_OFF)
            elif action in ("up", "down"):
                await self._vote(interaction, state_id, up=action == "up")
            else:
                await self._swap(interaction, action, state_id)
        except STORE_ERRORS as exc:
            log.warning("Button %s: Redis unavailable: %r", action, exc)
            await self._tell(interaction, MEMORY_DOWN)
        except BackendUnavailable as exc:
            log.warning("Button %s: no model: %s", action, exc)
            await self._tell(interaction, str(exc))
        except (SendFailed, *DELIVERY_ERRORS) as exc:
            log.warning("Button %s: the message could not be edited: %s", action, describe(exc))
            await self._tell(interaction, NOT_EDITED)
        except Exception:
            log.exception("Button %s of swipe state %s failed", action, state_id)
            await self._tell(interaction, FAILED)

    async def _tell(self, interaction: discord.Interaction, text: str) -> None:
        """An ephemeral sentence: the response, or a follow-up once the press was deferred."""
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except DELIVERY_ERRORS as exc:  # e.g. the 3-second deadline has passed
            log.error("Could not answer a button press: %s", describe(exc))

    async def _vote(self, interaction: discord.Interaction, state_id: str, *, up: bool) -> None:
        outcome = await self.services.feedback.vote(
            state_id, interaction.channel_id, interaction.user.id, up=up
        )
        if isinstance(outcome, Refused):
            await self._tell(interaction, outcome.reason)
            return
        await self._tell(interaction, vote_text(up, outcome.previous))

    async def _swap(self, interaction: discord.Interaction, action: str, state_id: str) -> None:
        feedback = self.services.feedback
        # Refusals are known at once: they are the press's answer. Otherwise a deferred update
        # (nothing visible) buys the time to write the answer; the edit is the result.
        state = await feedback.check_swap(state_id, interaction.channel_id)
        if isinstance(state, Refused):
            await self._tell(interaction, state.reason)
            return
        await interaction.response.defer()
        channel = interaction.channel
        character = self.services.registry.get(state.character_id)
        show = self._shower(channel, state, character)
        if action == "swipe":
            limit = self.bot.speaker.limit_for(channel, character)
            outcome = await feedback.another(state_id, channel.id, show, limit=limit)
        else:
            step = -1 if action == "prev" else 1
            outcome = await feedback.browse(state_id, channel.id, step, show)
        if isinstance(outcome, Refused):
            await self._tell(interaction, outcome.reason)
        elif isinstance(outcome, Shown) and outcome.repeated:
            await self._tell(
                interaction,
                f"{character.name} came up with an answer you've seen already "
                f"(answer {outcome.index + 1} of {outcome.count}); press 🔄 again for another.",
            )

    def _shower(self, channel: Channel, state: SwipeState, character: Character) -> Show:
        """Shows an alternative in the reply's message, with the buttons that go with it."""
        speaker = self.bot.speaker

        async def show(text: str, index: int, count: int) -> None:
            view = reply_view(state.id, index, count, swipeable=True)
            await speaker.edit_posted(
                channel, state.message_id, state.webhook_id, character, text, view=view
            )

        return show


async def setup(bot: CharacterBot) -> None:
    await bot.add_cog(Feedback(bot))
