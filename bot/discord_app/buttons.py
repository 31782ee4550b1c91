"""The buttons under a character's reply: 🔄 another answer, ◀ n/m ▶ browse, 👍 👎 votes.

Persistent across restarts: each button is a `discord.ui.DynamicItem` whose custom id carries
the action and the reply's swipe state id (`cb:<action>:<state id>`, state in Redis, see
bot/feedback.py). The bot registers the class (`add_dynamic_items`), so a press on a message
posted by an earlier run still reaches the Feedback cog.
"""

from __future__ import annotations

import re
from typing import Any

import discord

STYLES = {
    "swipe": ("🔄", discord.ButtonStyle.secondary),
    "prev": ("◀", discord.ButtonStyle.secondary),
    "next": ("▶", discord.ButtonStyle.secondary),
    "up": ("👍", discord.ButtonStyle.secondary),
    "down": ("👎", discord.ButtonStyle.secondary),
}


def custom_id(action: str, state_id: str) -> str:
    return f"cb:{action}:{state_id}"


class ReplyButton(
    discord.ui.DynamicItem[discord.ui.Button],
    template=re.compile(r"cb:(?P<action>swipe|prev|next|up|down):(?P<state>[0-9a-f]{32})"),
):
    """One button of a reply; pressing it hands the action to the Feedback cog."""

    def __init__(
        self, action: str, state_id: str, *, disabled: bool = False, row: int | None = None
    ) -> None:
        emoji, style = STYLES[action]
        super().__init__(
            discord.ui.Button(
                emoji=emoji,
                style=style,
                custom_id=custom_id(action, state_id),
                disabled=disabled,
            ),
            row=row,
        )
        self.action = action
        self.state_id = state_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ReplyButton:
        return cls(match["action"], match["state"])

    async def callback(self, interaction: discord.Interaction) -> None:
        cog = interaction.client.get_cog("Feedback")  # type: ignore[attr-defined]
        if cog is None:
            await interaction.response.send_message(
                "These buttons don't work right now (the bot is restarting?). Try again soon.",
                ephemeral=True,
            )
            return
        await cog.pressed(interaction, self.action, self.state_id)


def reply_view(
    state_id: str, index: int = 0, count: int = 1, *, swipeable: bool = True
) -> discord.ui.View:
    """The buttons for a reply showing alternative `index` of `count`: 🔄 (when the reply fits
    one message), ◀ n/m ▶ once there are two or more, and 👍 👎."""
    view = discord.ui.View(timeout=None)
    row = 0
    if swipeable and count > 1:
        view.add_item(ReplyButton("prev", state_id, disabled=index == 0, row=row))
        view.add_item(
            discord.ui.Button(
                label=f"{index + 1}/{count}",
                style=discord.ButtonStyle.secondary,
                custom_id=f"cb:pos:{state_id}",
                disabled=True,
                row=row,
            )
        )
        view.add_item(ReplyButton("next", state_id, disabled=index == count - 1, row=row))
        view.add_item(ReplyButton("swipe", state_id, row=row))
        row += 1  # with the votes that would be six buttons, one more than a row holds
    elif swipeable:
        view.add_item(ReplyButton("swipe", state_id, row=row))
    view.add_item(ReplyButton("up", state_id, row=row))
    view.add_item(ReplyButton("down", state_id, row=row))
    return view
