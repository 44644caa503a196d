"""Settings, read from the environment (and a ``.env`` file) with pydantic-settings."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_NUMBER = re.compile(r"^\s*\d+(\.\d+)?\s*$")


def _seconds_or_iso(value: Any) -> Any:
    """Let a duration be given as plain seconds (``"20"``) as well as ISO 8601 (``"PT20S"``)."""
    if isinstance(value, str) and _NUMBER.match(value):
        return timedelta(seconds=float(value))
    return value


#: A duration: seconds (``20``, ``0.5``) or ISO 8601 (``PT15M``, ``P14D``).
Duration = Annotated[timedelta, BeforeValidator(_seconds_or_iso)]


class Settings(BaseSettings):
    """Everything the rental service can be configured with (see the README's table).

    Attributes:
        mongodb_uri: Where MongoDB is. Empty: start the embedded server under ``data_dir``.
        database: Database name.
        data_dir: Where the embedded server keeps its file, pid and log files.
        host: HTTP bind address.
        port: HTTP port.
        jwt_secret: Key that signs access tokens.
        token_ttl_minutes: How long an access token is valid.
        staff_email: E-mail of the staff account created at start-up.
        staff_password: Its password.
        staff_name: Its display name.
        payment_timeout: How long reserved units wait for a successful charge.
        rental_period: From confirmation to the due date.
        reminder_before: How long before the due date the return reminder goes out.
        max_items_per_rental: The most SKUs one rental may hold.
        fraud_max_amount: Largest single charge accepted, in yen.
        fraud_max_charges_per_hour: Charges per member per sliding hour before fraud rejects.
        payment_retry_delay: Seconds before a failed gateway call is retried.
        payment_gateway: The payment adapter; only the in-memory ``fake`` exists.
        gateway_fail_next: Charge calls the fake gateway fails at start-up.
        read_your_writes_timeout: Seconds a query waits for its projection to catch up.
        lease_ttl: Seconds before another process takes over the projections and
            subscribers of a process that died.
        log_level: Python logging level.
    """

    model_config = SettingsConfigDict(env_prefix="", env_file=".env", extra="ignore")

    mongodb_uri: str = ""
    database: str = "rental_service"
    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    jwt_secret: SecretStr = SecretStr("change-me-in-production-0123456789abcdef")
    token_ttl_minutes: int = Field(default=60, ge=1)
    staff_email: str = "staff@example.com"
    staff_password: SecretStr = SecretStr("staff-password")
    staff_name: str = "Staff"
    payment_timeout: Duration = timedelta(minutes=15)
    rental_period: Duration = timedelta(days=14)
    reminder_before: Duration = timedelta(days=2)
    max_items_per_rental: int = Field(default=3, ge=1, le=20)
    fraud_max_amount: int = Field(default=100_000, ge=0)
    fraud_max_charges_per_hour: int = Field(default=5, ge=1)
    payment_retry_delay: float = Field(default=1.0, ge=0)
    payment_gateway: Literal["fake"] = "fake"
    gateway_fail_next: int = Field(default=0, ge=0)
    read_your_writes_timeout: float = Field(default=5.0, ge=0)
    lease_ttl: float = Field(default=10.0, gt=0)
    log_level: str = "INFO"

    @property
    def reminder_lead(self) -> timedelta:
        """How long before the due date the reminder fires.

        ``reminder_before``, but at most half the rental period, so that a short
        demo period still gets its reminder.
        """
        return min(self.reminder_before, self.rental_period / 2)
