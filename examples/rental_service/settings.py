"""Settings, read from the environment (and a ``.env`` file) with pydantic-settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the rental service can be configured with.

    Attributes:
        mongodb_uri: Where MongoDB is. Empty: start the embedded server under ``data_dir``.
        database: Database name.
        data_dir: Where the embedded server keeps its file.
        jwt_secret: Key that signs access tokens.
        token_ttl_minutes: How long an access token is valid.
        staff_email: E-mail of the staff account created at start-up.
        staff_password: Its password.
        payment_timeout_minutes: How long a reservation waits for payment.
        rental_days: Rental period before a rental is overdue.
        max_items_per_rental: The most items one rental may hold.
        fraud_max_amount: Largest single charge accepted, in yen.
        fraud_max_charges_per_hour: Charges per member per hour before fraud rejects.
        read_your_writes_timeout: Seconds a query waits for its projection to catch up.
        host: HTTP bind address.
        port: HTTP port.
    """

    model_config = SettingsConfigDict(env_prefix="", env_file=".env", extra="ignore")

    mongodb_uri: str = ""
    database: str = "rental_service"
    data_dir: Path = Path(".data")
    jwt_secret: SecretStr = SecretStr("change-me-in-production-0123456789abcdef")
    token_ttl_minutes: int = 60
    staff_email: str = "staff@example.com"
    staff_password: SecretStr = SecretStr("staff-password")
    payment_timeout_minutes: float = 15.0
    rental_days: float = 14.0
    max_items_per_rental: int = Field(default=3, ge=1)
    fraud_max_amount: int = 100_000
    fraud_max_charges_per_hour: int = 5
    read_your_writes_timeout: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8000
