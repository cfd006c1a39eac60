"""Ollama's account routes, answered by the gateway for its own keys.

``ollama signin`` calls ``POST /api/me`` and prints "You are already signed in as user '<name>'"
when the answer has a ``name``: here that is the name of the gateway key the request acts for (a
signed request whose public key belongs to no key never gets here: authentication answered it
with a 401 carrying ``signin_url``). ``ollama signout`` calls ``POST /api/signout``: a signed
request detaches the public key that signed it (self-service removal); there is nothing to detach
for a request made with a gateway key itself.

Only an admin key, with ``GATEWAY_ALLOW_CLOUD`` on, reaches Ollama's own account (its cloud
sign-in) through these routes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from gateway.flow import Flow
from gateway.keys.store import Scope
from gateway.ollama.surfaces import Account
from gateway.proxy.inbound import Inbound

# Detaches the public key with this fingerprint from the key with this id.
Detach = Callable[[str, str], Awaitable[None]]


class AccountPolicy:
    def __init__(self, *, allow_cloud: bool, detach: Detach) -> None:
        self._allow_cloud = allow_cloud
        self._detach = detach

    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        account = flow.route.account
        if account is None:
            return
        principal = flow.caller()
        if self._allow_cloud and Scope.ADMIN in principal.scopes:
            return  # forwarded: Ollama's own account
        if account is Account.WHO:
            flow.answer = json.dumps({"name": principal.name}).encode()
            return
        if flow.public_key is not None:
            await self._detach(principal.key_id, flow.public_key)
        flow.answer = b"{}"

    def finish(self, flow: Flow, admitted: None) -> None:
        pass
