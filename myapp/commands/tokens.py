"""``myapp tokens create-admin``: a new admin API token, and the line that configures it."""

from __future__ import annotations

from typing import Any

from .context import CommandContext
from .registry import Command, register, register_group

register_group("tokens", help="API tokens: create the admin token")


@register
class CreateAdminToken(Command):
    name = "tokens create-admin"
    help = "Print a new admin API token and the setting that makes it valid"
    description = """
        Make a new random admin token (256 bits) and print it once, with the SHA-256
        line to put in the ini file's [app:main] section (or in the MYAPP_ADMIN_TOKEN_HASH
        environment variable, which wins). Only the hash is ever stored; several hashes,
        separated by spaces, are all valid, so tokens can be rotated without downtime.
        Nothing is written to the database.
        """
    atomic = False  # no database work

    def handle(self, ctx: CommandContext, **options: Any) -> None:
        from myapp.services.tokens import ADMIN_ENV, ADMIN_SETTING, new_token_and_hash

        token, digest = new_token_and_hash()
        ctx.out(f"admin token (give it to the admin; it is not stored): {token}")
        ctx.out(f"configuration (ini [app:main], or the {ADMIN_ENV} environment variable):")
        ctx.out(f"{ADMIN_SETTING} = {digest}")
