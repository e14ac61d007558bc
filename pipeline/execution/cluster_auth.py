"""Joining a Ray cluster that requires token authentication: the token set-up (as `ray start --head` does
it), undoing it once the process leaves, and the one-line messages when the token is missing or wrong."""

from __future__ import annotations

import os

_TOKEN_HELP = "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN"


class ClusterUnavailable(RuntimeError):
    """The Ray cluster given cannot be joined; the message is one line with the cause and the fix."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail  # Ray's own error text, for a log; never printed by the CLI


def setup_token_auth(where: str, may_enable: bool) -> bool:
    """Use the token the way `ray start --head` does: on when RAY_AUTH_MODE is unset and a token exists.

    `may_enable` is false when this process already runs Ray: its authentication mode is settled.
    """
    from ray._raylet import AuthenticationTokenLoader, Config
    from ray.exceptions import AuthenticationError

    try:
        has_token = AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    except AuthenticationError:  # RAY_AUTH_TOKEN_PATH names a missing or empty file
        has_token = None
    if has_token is None:  # raised here, not in the handler, so that the one line is the whole story
        path = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
        raise ClusterUnavailable(
            f"{where}: RAY_AUTH_TOKEN_PATH={path} cannot be read or is empty; point it at the file that holds "
            "the cluster's token (`ray get-auth-token` on the head prints it), or unset it"
        )
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None and has_token and may_enable:
        os.environ["RAY_AUTH_MODE"] = "token"  # as ray._private.authentication.authentication_token_setup does
        Config.initialize("")
        return True
    if mode is not None and mode.lower() == "token" and not has_token:
        # Ray would abort the process (a failed check in C++) at its first request without a token.
        raise ClusterUnavailable(
            f"{where}: RAY_AUTH_MODE=token but no token was found; copy the cluster's token "
            f"(`ray get-auth-token` on the head) to {_TOKEN_HELP}"
        )
    return False


def unset_token_mode() -> None:
    """Undo setup_token_auth's RAY_AUTH_MODE=token once this process has left the cluster: a later local
    runtime in the same process (a library caller, the next test) must not inherit a token requirement."""
    from ray._raylet import Config

    os.environ.pop("RAY_AUTH_MODE", None)
    Config.initialize("")


def auth_message(where: str) -> str:
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None:  # left unset: no token was found
        return (
            f"{where}: the cluster requires token authentication and no token was found; copy the cluster's "
            f"token (`ray get-auth-token` on the head prints it) to {_TOKEN_HELP}"
        )
    if mode.lower() != "token":
        return (
            f"{where}: the cluster requires token authentication but RAY_AUTH_MODE={mode}; unset it or set "
            f"RAY_AUTH_MODE=token, with the cluster's token in {_TOKEN_HELP}"
        )
    if os.environ.get("RAY_AUTH_TOKEN"):
        source = "RAY_AUTH_TOKEN"
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        source = f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    else:
        source = "~/.ray/auth_token"
    return (
        f"{where}: the cluster rejected the token from {source}; set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, "
        "or ~/.ray/auth_token) to the cluster's token: `ray get-auth-token` on the head prints it"
    )


def is_auth_error(error: BaseException | str) -> bool:
    from ray.exceptions import AuthenticationError

    return isinstance(error, AuthenticationError) or "InvalidAuthToken" in str(error)
