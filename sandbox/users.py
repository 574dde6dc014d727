"""Numeric users, and switching to one for good.

The bridge drops root once its listeners are bound; the confinement
launcher runs the app as its own user. Both take ``UID:GID`` in numbers: an
enclave image need not have a user database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UserIds:
    uid: int
    gid: int

    @classmethod
    def parse(cls, text: str) -> UserIds:
        """``UID:GID``, both numbers, neither 0: switching to root drops nothing."""
        uid, sep, gid = text.partition(":")
        if not (sep and uid.isdigit() and gid.isdigit()):
            raise ValueError(
                f"expected UID:GID as numbers, e.g. 65534:65534, got {text!r}"
            )
        user = cls(int(uid), int(gid))
        if user.uid == 0 or user.gid == 0:
            raise ValueError(f"expected a user other than root, got {text!r}")
        return user

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


def switch_to(user: UserIds) -> None:
    """Become ``user`` for good: no supplementary groups, no way back."""
    if os.geteuid() != 0:
        raise PermissionError(
            f"cannot switch to {user}: expected to run as root, "
            f"running as uid {os.geteuid()}"
        )
    # Groups first: once the uid is dropped, changing them is refused.
    os.setgroups([])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
