"""One place for every setting. Each is read from an environment variable named
``LEADMARKET_<FIELD>`` (for example ``LEADMARKET_DATABASE_URL``) or from a ``.env`` file in the
working directory. The README lists them all; keep that table in step with this class."""

from __future__ import annotations

import secrets
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from leadmarket.kit.keyring import Keyring, load_keyring

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADMARKET_", env_file=".env", extra="ignore")

    # Where things live.
    var_dir: Path = Field(
        default=Path("var"), description="Folder for the embedded database, mail files and keys."
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy async URL. Empty means a SQLite file `leadmarket.db` in var_dir. "
        "PostgreSQL: postgresql+asyncpg://user@host/db.",
    )
    database_pool_size: int = Field(default=10, ge=1, description="PostgreSQL pool size.")
    base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Public address of the service, used in links sent by email.",
    )
    region: str = Field(
        default="us-west", description="Hosting region the data lives in (promise P11)."
    )
    data_region: str = Field(
        default="Canada (Quebec)",
        min_length=1,
        max_length=100,
        description="Where personal data is hosted, as the privacy notice states it (P11). "
        "Configuration, not code: change it with the hosting.",
    )
    notice_banner_days: int = Field(
        default=30,
        ge=0,
        le=365,
        description="A new privacy notice version is announced by a banner on every page from "
        "its publication until this many days after its effective date (P12).",
    )
    notice_announce_batch: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Members emailed per job run when a new privacy notice version is announced.",
    )

    # Secrets.
    secret_key: SecretStr | None = Field(
        default=None,
        description="Key for signed links and keyed hashes. Empty: generated once and kept in "
        "var_dir/secret.key (development only; set it in production).",
    )

    master_keys: SecretStr | None = Field(
        default=None,
        description="Master keys that wrap each lead's data key, 'VERSION:BASE64,…' (first is "
        "current). Empty: the key file master_key_file, created on first use.",
    )
    master_key_file: Path | None = Field(
        default=None, description="Master key file (JSON); default var_dir/master.keys."
    )

    # Leads.
    duplicate_window_days: int = Field(
        default=30,
        ge=0,
        description="A lead for the same consumer and vertical within this "
        "many days is a duplicate (409).",
    )
    pii_retention_hours: int = Field(
        default=48,
        ge=1,
        description="Personal data of a lead is destroyed this long after it "
        "is sold or its auction ends (L4).",
    )
    retention_sweep_seconds: int = Field(
        default=10,
        ge=1,
        le=3600,
        description="How often the retention sweep destroys the personal data of leads past "
        "their deadline (L4). The worst lateness is about this plus the worker's poll interval.",
    )
    fixed_price_listing_hours: int = Field(
        default=168,
        ge=1,
        le=24 * 365,
        description="How long a fixed-price lead stays on sale. Then it leaves the market "
        "(unsold, or sold to the buyers it has) and its personal data is destroyed "
        "pii_retention_hours later, like an auction's (L4): no lead keeps its data forever.",
    )
    auction_opening_bid_cents: int = Field(
        default=100,
        ge=1,
        description="The lowest first bid in an auction.",
    )
    auction_min_increment_cents: int = Field(
        default=50,
        ge=1,
        description="A bid must beat the current price by at least this much.",
    )
    auction_extension_minutes: int = Field(
        default=2,
        ge=0,
        le=60,
        description="Anti-sniping: a bid in an auction's last N minutes moves its end to N "
        "minutes after the bid (0: never extend).",
    )
    demo_market: bool = Field(
        default=False,
        description="Keep the demo market living: a new demo lead every minute (make run).",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for live page updates across server processes (e.g. "
        "redis://127.0.0.1:6379/0); unset, updates stay within each process.",
    )
    velocity_seller_per_minute: int = Field(
        default=120,
        ge=1,
        description="Leads a seller posts per minute before the quality "
        "score marks them as a burst.",
    )
    velocity_ip_per_hour: int = Field(
        default=5,
        ge=1,
        description="Leads from one consumer address per hour before the "
        "quality score marks them as suspicious.",
    )
    intake_batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=50,
        description="How long the API's lead writer waits for more leads to write in the same "
        "transaction, once the server is busy (an idle server writes each lead at once).",
    )

    # Money (M5).
    platform_fee_percent: Decimal = Field(
        default=Decimal(10),
        ge=0,
        le=100,
        max_digits=5,
        decimal_places=2,
        description="The platform's fee on each sale, in percent of the price. The fee is "
        "rounded down to whole cents; the seller gets the rest.",
    )
    payment_processor: Literal["sandbox"] = Field(
        default="sandbox",
        description="Which payment processor deposits go through. `sandbox` settles at once "
        "and declines the payment method `sandbox_decline`.",
    )
    deposit_max_cents: int = Field(
        default=10_000_000, ge=1, description="Largest single deposit, in cents."
    )

    # Campaigns.
    matching_recheck_ms: int = Field(
        default=0,
        ge=0,
        le=60_000,
        description="How often the matching index reads the campaign version from the "
        "database: 0 before every use; N at most every N ms (a new or resumed campaign may then "
        "start bidding up to N ms late; a paused one never buys, the sale re-checks it).",
    )

    # Ping/post (real-time selling).
    ping_price_rule: Literal["first", "second"] = Field(
        default="second",
        description="What the winner of a ping pays: `first` its own bid; `second` the next "
        "best bid plus one cent (at least the ping's floor), never more than its own bid.",
    )
    ping_expiry_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="How long a ping's price holds: the post must arrive within this time.",
    )
    ping_duplicate_window_minutes: int = Field(
        default=10,
        ge=0,
        le=24 * 60,
        description="The same ping (same seller, same fields) within this many minutes is "
        "refused with 409 naming the earlier ping (0: never).",
    )
    ping_deadline_ms: int = Field(
        default=200,
        ge=10,
        le=5000,
        description="The longest a ping waits for buyers' own endpoints before answering.",
    )
    ping_buyer_timeout_ms: int = Field(
        default=150,
        ge=5,
        le=5000,
        description="The longest one buyer's endpoint is waited for (within the deadline).",
    )
    ping_batch_wait_ms: float = Field(
        default=1.0,
        ge=0,
        le=50,
        description="When busy, how long the ping recorder waits to gather more pings into one "
        "transaction (an idle server writes each ping at once).",
    )
    ping_retention_days: int = Field(
        default=90,
        ge=1,
        le=3650,
        description="Pings older than this are deleted by the hourly ping sweep, unless they "
        "were posted and their lead still exists (pingpost.retention).",
    )

    # Orders and lead delivery.
    return_window_hours: int = Field(
        default=120,
        ge=0,
        le=24 * 60,
        description="The return window: how long after a sale the buyer may return the lead, "
        "and the buyer's funds stay held before they are paid to the seller (5 days).",
    )
    return_decision_hours: int = Field(
        default=48,
        ge=1,
        le=24 * 30,
        description="How long a seller has to approve or deny a return; silence approves it.",
    )
    return_dispute_hours: int = Field(
        default=168,
        ge=1,
        le=24 * 90,
        description="How long after a seller denies a return the buyer may dispute the denial "
        "to an admin.",
    )
    return_rate_cap_percent: Decimal = Field(
        default=Decimal(15),
        ge=0,
        le=100,
        max_digits=5,
        decimal_places=2,
        description="A buyer whose returns over the rolling window would exceed this share of "
        "their orders (counting the new one) has the return reviewed by an admin instead of "
        "the seller.",
    )
    return_rate_window_days: int = Field(
        default=30, ge=1, le=365, description="The rolling window of the return-rate cap."
    )
    return_rate_min_orders: int = Field(
        default=10,
        ge=0,
        description="The return-rate cap applies once the buyer has this many orders in the "
        "window (a first return on a first order is not a 100% rate to act on).",
    )
    return_trust_min_orders: int = Field(
        default=20,
        ge=1,
        description="A buyer with at least this many orders (ever) and a low approved-return "
        "rate is trusted: their returns are approved at once. Admins can also trust a buyer.",
    )
    return_trust_max_percent: Decimal = Field(
        default=Decimal(5),
        ge=0,
        le=100,
        max_digits=5,
        decimal_places=2,
        description="The highest approved-return rate (percent of all orders) of a trusted buyer.",
    )
    return_evidence_max_bytes: int = Field(
        default=512_000,
        ge=1024,
        le=900_000,
        description="Largest evidence file attached to a return (it must fit in a request body).",
    )
    payout_minimum_cents: int = Field(
        default=1000,
        ge=1,
        description="The scheduled payout pays a seller whose settled balance is at least this; "
        "a seller may ask for any positive balance.",
    )
    payouts_scheduled: bool = Field(
        default=True,
        description="Pay sellers their settled balance once a day without being asked.",
    )
    # Feedback and ratings (M3).
    feedback_window_days: int = Field(
        default=60,
        ge=1,
        le=365,
        description="How long after a sale each party may leave feedback about the other.",
    )
    feedback_edit_hours: int = Field(
        default=24,
        ge=0,
        le=24 * 30,
        description="How long the author may change their rating and comment after leaving it.",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="Deadline of one webhook delivery attempt."
    )
    webhook_max_attempts: int = Field(
        default=8,
        ge=1,
        le=20,
        description="Attempts of a webhook delivery (with exponential backoff) before it is "
        "marked failed; the buyer can replay it from the delivery log.",
    )
    webhook_allow_private_networks: bool = Field(
        default=False,
        description="Allow webhook URLs on loopback, private and link-local addresses and "
        "plain http (development and tests only: otherwise a buyer could make the service "
        "call into its own network).",
    )

    # Member messages (M4) and fraud review (M6).
    message_max_chars: int = Field(
        default=2000, ge=1, le=20_000, description="Longest member message, in characters."
    )
    messages_per_hour: int = Field(
        default=20, ge=1, description="Member messages one member may send per hour (429 above)."
    )
    messages_per_day: int = Field(
        default=100, ge=1, description="Member messages one member may send per day (429 above)."
    )
    message_same_text_max_threads: int = Field(
        default=3,
        ge=1,
        description="The same text may be sent into this many order threads a day; more is "
        "bulk messaging (refused, and recorded as a fraud signal).",
    )
    fraud_reports_per_day: int = Field(
        default=20,
        ge=1,
        description="Fraud complaints and spam reports one member may file per day (429 above).",
    )
    fraud_low_quality_score: int = Field(
        default=40,
        ge=0,
        le=101,
        description="A new lead whose quality score is below this is a fraud signal against "
        "its seller (0 turns the signal off).",
    )
    fraud_returns_threshold: int = Field(
        default=3,
        ge=1,
        description="Approved returns for a fake or fraudulent identity within the window that "
        "make a seller a 'many fraud returns' case.",
    )
    fraud_returns_window_days: int = Field(
        default=30, ge=1, le=365, description="The window of fraud_returns_threshold, in days."
    )

    # Sessions and accounts.
    session_hours: int = Field(default=12, ge=1, description="Lifetime of a normal session.")
    remember_days: int = Field(default=30, ge=1, description="Lifetime of a 'stay signed in' one.")
    reauth_minutes: int = Field(
        default=10, ge=1, description="How long a password re-entry unlocks sensitive actions (A2)."
    )
    cookie_secure: bool = Field(
        default=True,
        description="Mark the session cookie Secure. Browsers accept Secure cookies from "
        "http://127.0.0.1 and http://localhost, so this stays on in development too.",
    )
    email_token_hours: int = Field(default=48, ge=1, description="Email verification link life.")
    password_reset_minutes: int = Field(default=30, ge=5, description="Password reset link life.")
    password_min_length: int = Field(default=8, ge=8, description="Shortest password accepted.")
    password_min_strength: int = Field(
        default=2, ge=0, le=4, description="Lowest zxcvbn score (0-4) a password may have."
    )
    argon2_time_cost: int = Field(default=3, ge=1, description="argon2id passes.")
    argon2_memory_kib: int = Field(default=65536, ge=8, description="argon2id memory in KiB.")
    login_window_minutes: int = Field(default=15, ge=1, description="Login throttling window.")
    login_max_failures_per_account: int = Field(
        default=5, ge=1, description="Failed logins per account in the window before a 429."
    )
    login_max_failures_per_ip: int = Field(
        default=30, ge=1, description="Failed logins per client address in the window."
    )

    # HTTP.
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted (413 above)."
    )
    max_upload_bytes: int = Field(
        default=33_554_432, ge=1024, description="Largest lead file upload (CSV) accepted."
    )
    trust_proxy_headers: bool = Field(
        default=False, description="Take the client address from X-Forwarded-For."
    )

    # Background jobs.
    run_jobs_in_process: bool = Field(
        default=True,
        description="`serve` also runs the job worker. Turn off when `leadmarket worker` runs.",
    )
    job_lease_seconds: int = Field(
        default=60, ge=1, description="A claimed job not finished by then is run again."
    )
    job_poll_seconds: float = Field(default=1.0, gt=0, description="Worker idle poll interval.")
    job_max_attempts: int = Field(default=8, ge=1, description="Tries before a job is dead.")

    # Mail.
    mail_backend: Literal["file", "smtp"] = Field(
        default="file", description="`file` writes .eml files to mail_dir; `smtp` sends them."
    )
    mail_dir: Path | None = Field(
        default=None, description="Where the file backend writes; default var_dir/mail."
    )
    mail_from: str = Field(default="Leadmarket <no-reply@leadmarket.test>")
    mail_retention_days: int = Field(
        default=30,
        ge=1,
        description="Sent, failed and suppressed mail (address, body) is deleted after this.",
    )
    smtp_host: str = Field(default="127.0.0.1")
    smtp_port: int = Field(default=25)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = 10.0

    # Text messages.
    sms_backend: Literal["file"] = Field(
        default="file",
        description="Where text messages go. Only `file` exists: one file per message in "
        "sms_dir (development; no SMS provider is connected yet).",
    )
    sms_dir: Path | None = Field(
        default=None, description="Where the file text-message backend writes; default var_dir/sms."
    )

    # Consumer rights requests (P1–P6).
    privacy_code_minutes: int = Field(
        default=15,
        ge=1,
        le=24 * 60,
        description="How long a rights request's one-time code is valid; an unverified request "
        "expires with its code and must be submitted again.",
    )
    privacy_code_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description="Wrong codes allowed per rights request before it expires.",
    )
    privacy_report_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="How long a know/access report stays downloadable after it is ready; then "
        "its sealed copy is deleted.",
    )
    privacy_request_retention_months: int = Field(
        default=24,
        ge=1,
        le=120,
        description="Rights requests and their handling records are kept this long after "
        "receipt, then deleted by the privacy sweep.",
    )
    privacy_requests_per_ip_per_hour: int = Field(
        default=10,
        ge=1,
        description="Rights requests one client address may submit per hour (then 429).",
    )
    privacy_requests_per_identifier_per_day: int = Field(
        default=5,
        ge=1,
        description="Rights requests naming the same email or phone per day (then 429).",
    )

    # Logs.
    log_level: str = Field(default="INFO")
    log_format: Literal["json", "text"] = Field(default="json")

    _signing_key: bytes | None = PrivateAttr(default=None)
    _keyring: Keyring | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.var_dir / 'leadmarket.db'}"
        if self.mail_dir is None:
            self.mail_dir = self.var_dir / "mail"
        if self.sms_dir is None:
            self.sms_dir = self.var_dir / "sms"
        if self.master_key_file is None:
            self.master_key_file = self.var_dir / "master.keys"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def mail_path(self) -> Path:
        assert self.mail_dir is not None
        return self.mail_dir

    @property
    def sms_path(self) -> Path:
        assert self.sms_dir is not None
        return self.sms_dir

    def keyring(self) -> Keyring:
        """The master keys (loaded once; the key file is created on first use). Read from
        ``__pydantic_private__`` directly: ``self._keyring`` goes through pydantic's
        ``__getattr__``, which cost 20 µs a lead on intake's hot path, more than hashing its
        three blind indexes."""
        private = self.__pydantic_private__
        keyring = private.get("_keyring") if private else None
        if isinstance(keyring, Keyring):
            return keyring
        assert self.master_key_file is not None
        env_value = self.master_keys.get_secret_value() if self.master_keys else None
        self._keyring = load_keyring(env_value, self.master_key_file)
        return self._keyring

    def reload_keyring(self) -> Keyring:
        self._keyring = None
        return self.keyring()

    def signing_key(self) -> bytes:
        """The root secret. Generated and kept on disk when not configured, so a development
        install works out of the box while links survive a restart."""
        if self._signing_key is None:
            self._signing_key = self._load_signing_key()
        return self._signing_key

    def _load_signing_key(self) -> bytes:
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.var_dir / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip().encode()


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_of(connection: HTTPConnection) -> Settings:
    """The settings of the application serving ``connection`` (a request or a websocket)."""
    settings: Settings = connection.app.state.settings
    return settings
