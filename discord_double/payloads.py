"""The JSON Discord sends for users, members, roles, channels, the guild, messages and
interactions: what FakeDiscord feeds discord.py's real parsers. A mixin, so the payloads read
the fake's ids and state (nicknames, DM channels, permissions)."""

from __future__ import annotations

from datetime import UTC, datetime

import discord

DM_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    read_message_history=True,
    embed_links=True,
    attach_files=True,
    add_reactions=True,
    use_application_commands=True,
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class DiscordPayloads:
    def user_payload(self, user_id: int) -> dict:
        names = {
            self.bot_user_id: "Character Bot",
            self.admin_id: "Admin",
            self.member_id: "Member",
        }
        names.update(self._usernames)
        return {
            "id": str(user_id),
            "username": names.get(user_id, f"user{user_id % 1000}"),
            "global_name": None,
            "discriminator": "0",
            "avatar": None,
            "bot": user_id == self.bot_user_id,
        }

    def member_payload(self, user_id: int, *, with_user: bool = True) -> dict:
        roles = {self.admin_id: [self.admin_role_id], self.bot_user_id: [self.bot_role_id]}
        payload = {
            "roles": [str(r) for r in roles.get(user_id, [])],
            "joined_at": now_iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": self._nicks.get(user_id),
        }
        if with_user:
            payload["user"] = self.user_payload(user_id)
        return payload

    def _permissions(self, user_id: int) -> discord.Permissions:
        member = discord.Permissions(
            view_channel=True,
            send_messages=True,
            read_message_history=True,
            use_application_commands=True,
        )
        if user_id == self.admin_id:
            return discord.Permissions.all()
        if user_id == self.bot_user_id:
            member.update(
                embed_links=True,
                send_messages_in_threads=True,
                manage_webhooks=self.bot_can_manage_webhooks,
                manage_messages=self.bot_can_manage_messages,
            )
        return member

    def _role(self, role_id: int, name: str, position: int, permissions: discord.Permissions):
        return {
            "id": str(role_id),
            "name": name,
            "color": 0,
            "hoist": False,
            "position": position,
            "permissions": str(permissions.value),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    def _channel_payload(self, channel_id: int | None = None) -> dict:
        channel_id = channel_id or self.channel_id
        return {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(self.guild_id),
            "name": self._extra_channels.get(channel_id, "general"),
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }

    def _thread_payload(self) -> dict:
        return {
            "id": str(self.thread_id),
            "type": 11,
            "guild_id": str(self.guild_id),
            "parent_id": str(self.channel_id),
            "owner_id": str(self.member_id),
            "name": "side quest",
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": now_iso(),
                "locked": False,
            },
        }

    def guild_payload(self) -> dict:
        everyone = discord.Permissions(
            view_channel=True, send_messages=True, read_message_history=True
        )
        return {
            "id": str(self.guild_id),
            "name": "Test server",
            "icon": None,
            "owner_id": str(self.admin_id),
            "roles": [
                self._role(self.guild_id, "@everyone", 0, everyone),
                self._role(
                    self.bot_role_id, "Character Bot", 1, self._permissions(self.bot_user_id)
                ),
                self._role(self.admin_role_id, "Admin", 2, discord.Permissions.all()),
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "member_count": 3,
            "large": False,
            "unavailable": False,
            "members": [self.member_payload(self.bot_user_id)],
            "channels": [
                self._channel_payload(),
                *(self._channel_payload(c) for c in self._extra_channels),
            ],
            "threads": [self._thread_payload()],
            "voice_states": [],
            "presences": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "system_channel_flags": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "afk_timeout": 300,
        }

    def _dm_channel_payload(self, channel_id: int) -> dict:
        return {
            "id": str(channel_id),
            "type": 1,
            "last_message_id": None,
            "flags": 0,
            "recipients": [self.user_payload(self._dm_user(channel_id))],
        }

    def _message_base(self, message_id: int, channel_id: int, content: str) -> dict:
        base = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "guild_id": str(self.guild_id),
            "content": content,
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if self._dm_user(channel_id) is not None:
            del base["guild_id"]  # DM messages carry no guild
        return base

    def _interaction(self, kind: int, data: dict, user_id: int | None, channel_id: int | None):
        channel_id = channel_id or self.channel_id
        dm_user = self._dm_user(channel_id)
        user_id = user_id or dm_user or self.member_id
        payload = {
            "id": str(self.new_id()),
            "application_id": str(self.application_id),
            "type": kind,
            "token": f"interaction-token-{self.new_id()}",
            "version": 1,
            "channel_id": str(channel_id),
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
            "data": data,
        }
        if dm_user is not None:
            # In the bot's DM: no guild, `user` instead of `member`, context 1 (BOT_DM).
            assert user_id == dm_user, "only the DM's recipient runs commands in it"
            payload |= {
                "channel": self._dm_channel_payload(channel_id),
                "user": self.user_payload(user_id),
                "app_permissions": str(DM_PERMISSIONS.value),
                "authorizing_integration_owners": {"0": "0"},
                "context": 1,
            }
        else:
            channel = (
                self._thread_payload()
                if channel_id == self.thread_id
                else self._channel_payload(channel_id)
            )
            payload |= {
                "guild_id": str(self.guild_id),
                "channel": channel,
                "member": {
                    **self.member_payload(user_id),
                    "permissions": str(self._permissions(user_id).value),
                },
                "app_permissions": str(self._permissions(self.bot_user_id).value),
                "guild_locale": "en-US",
                "authorizing_integration_owners": {"0": str(self.guild_id)},
                "context": 0,
            }
        self._interactions[payload["token"]] = payload
        return payload
