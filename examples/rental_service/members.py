"""Authentication's write side: members, their sign-up, and a directory to look them up.

A member's id is derived from the lower-cased e-mail address, so the member
stream doubles as the e-mail uniqueness check: a second sign-up with the same
address addresses the same stream and is refused.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from cqrs_kit import Aggregate, Command, CommandBus, DomainError, Repository, StreamStore, applies
from examples.rental_service.events import MemberSignedUp

_MEMBER_NAMESPACE = uuid.UUID("2f9a6c3e-0b7d-5f1e-8c4a-6d2b9e1f7a30")

Email = Annotated[
    str,
    Field(
        min_length=3,
        max_length=254,
        pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        examples=["ann@example.com"],
    ),
]
Role = Literal["member", "staff"]


def member_id_for(email: str) -> str:
    """The member id of an e-mail address (stable, case-insensitive)."""
    return "m-" + uuid.uuid5(_MEMBER_NAMESPACE, email.strip().lower()).hex[:16]


class EmailTaken(DomainError):
    """Someone already signed up with this e-mail address."""

    status_code = 409

    def __init__(self, email: str) -> None:
        super().__init__(f"an account with e-mail {email!r} already exists")
        self.email = email


class MemberState(BaseModel):
    """What the member stream remembers."""

    signed_up: bool = False
    email: str = ""
    name: str = ""
    role: str = "member"
    password_hash: str = ""


class Member(Aggregate[MemberState]):
    """A member or staff account."""

    stream_prefix = "member-"

    def sign_up(self, *, email: str, name: str, role: str, password_hash: str) -> None:
        """Create the account, unless it exists."""
        if self.state.signed_up:
            raise EmailTaken(email)
        self.record(
            MemberSignedUp(
                member_id=self.id,
                email=email.strip().lower(),
                name=name,
                role=role,
                password_hash=password_hash,
            )
        )

    @applies(MemberSignedUp)
    def _signed_up(self, event: MemberSignedUp) -> None:
        self.state.signed_up = True
        self.state.email = event.email
        self.state.name = event.name
        self.state.role = event.role
        self.state.password_hash = event.password_hash


class SignUp(Command):
    """Create an account; the password arrives already hashed."""

    email: Email
    name: str = Field(min_length=1, max_length=100)
    role: Role = "member"
    password_hash: str = Field(min_length=1, max_length=500)

    @property
    def aggregate_id(self) -> str:
        """The member stream this e-mail address maps to."""
        return member_id_for(self.email)


async def _sign_up(command: SignUp, member: Member) -> None:
    member.sign_up(
        email=command.email,
        name=command.name,
        role=command.role,
        password_hash=command.password_hash,
    )


def register_member_handlers(bus: CommandBus) -> None:
    """Route the authentication commands to their aggregate."""
    bus.register(SignUp, _sign_up, aggregate=Member)


class MemberRecord(BaseModel):
    """A member as the directory returns it."""

    member_id: str
    email: str
    name: str
    role: str
    password_hash: str


class Directory:
    """Looks members up on the write side (their own streams), so answers are never stale.

    Args:
        store: The event store (or the in-memory one in tests).
    """

    def __init__(self, store: StreamStore) -> None:
        self.members = Repository(store, Member)

    async def get(self, member_id: str) -> MemberRecord | None:
        """The member with this id, or ``None``."""
        if not member_id.startswith("m-"):
            return None
        member = await self.members.load(member_id)
        if not member.state.signed_up:
            return None
        state = member.state
        return MemberRecord(
            member_id=member.id,
            email=state.email,
            name=state.name,
            role=state.role,
            password_hash=state.password_hash,
        )

    async def by_email(self, email: str) -> MemberRecord | None:
        """The member with this e-mail address, or ``None``."""
        return await self.get(member_id_for(email))

    async def is_staff(self, member_id: str | None) -> bool:
        """Whether ``member_id`` is a staff account."""
        if not member_id:
            return False
        record = await self.get(member_id)
        return record is not None and record.role == "staff"
