"""User identity: tokens verified (:mod:`auth.tokens`), what each user may do per channel
(:mod:`auth.identity`, :mod:`auth.grants`), and the gate every request passes
(:mod:`auth.web`)."""

from auth.grants import Access, Grant, Grants
from auth.identity import ANONYMOUS, Identity
from auth.settings import AuthSettings
from auth.tokens import Verifier
from auth.web import Gate

__all__ = [
    "ANONYMOUS",
    "Access",
    "AuthSettings",
    "Gate",
    "Grant",
    "Grants",
    "Identity",
    "Verifier",
]
