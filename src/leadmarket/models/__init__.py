"""ORM models, one module per aggregate. Importing this package registers every table on
``Base.metadata`` (Alembic and the test fixtures rely on that)."""

from leadmarket.kit.db import Base
from leadmarket.models.account import ApiKey, LoginFailure, Role, User, UserSession, UserStatus
from leadmarket.models.audit import AuditEvent, AuditHead
from leadmarket.models.job import Job, JobStatus
from leadmarket.models.mail import MailCategory, MailStatus, MailSuppression, OutboundMail

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuditHead",
    "Base",
    "Job",
    "JobStatus",
    "LoginFailure",
    "MailCategory",
    "MailStatus",
    "MailSuppression",
    "OutboundMail",
    "Role",
    "User",
    "UserSession",
    "UserStatus",
]
