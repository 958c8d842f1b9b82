"""ORM models, one module per aggregate. Importing this package registers every table on
``Base.metadata`` (Alembic and the test fixtures rely on that)."""

from leadmarket.kit.db import Base
from leadmarket.models.account import ApiKey, LoginFailure, Role, User, UserSession, UserStatus
from leadmarket.models.auction import Auction, AuctionOutcome, Bid, BidStatus
from leadmarket.models.audit import AuditEvent, AuditHead
from leadmarket.models.campaign import Campaign, CampaignCapCounter, MatchingVersion
from leadmarket.models.fraud import FraudCase, FraudCaseAction, FraudCaseStatus, FraudSignal
from leadmarket.models.job import Job, JobStatus
from leadmarket.models.lead import (
    Consent,
    ConsentText,
    IdempotencyRecord,
    Lead,
    LeadBlindIndex,
    LeadStatus,
    LeadVault,
    SaleMode,
)
from leadmarket.models.ledger import (
    AccountKind,
    Deposit,
    DepositStatus,
    HoldStatus,
    LedgerAccount,
    LedgerEntry,
    LedgerHold,
    LedgerTransaction,
    TransactionKind,
)
from leadmarket.models.legal import (
    LegalDocumentKind,
    LegalRequest,
    LegalRequestStatus,
    LegalSubjectKind,
)
from leadmarket.models.mail import (
    MailCategory,
    MailStatus,
    MailSuppression,
    MailTopic,
    OutboundMail,
)
from leadmarket.models.messages import MemberMessage
from leadmarket.models.opt_out import ConsumerOptOut
from leadmarket.models.order import (
    DeliveryStatus,
    Disclosure,
    Order,
    OrderStatus,
    SaleVia,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from leadmarket.models.ping import Ping, PingFingerprint, PingOutcome
from leadmarket.models.preferences import CommunicationPreference, PrivacyNotice
from leadmarket.models.privacy import (
    Channel,
    DenialReason,
    OnBehalf,
    PrivacyRequest,
    PrivacyRequestEvent,
    PrivacyThrottleHit,
    ProofStatus,
    RequestStatus,
    RequestType,
)
from leadmarket.models.upload import (
    LeadUpload,
    LeadUploadChunk,
    LeadUploadRow,
    UploadRowStatus,
    UploadStatus,
)

__all__ = [
    "AccountKind",
    "ApiKey",
    "Auction",
    "AuctionOutcome",
    "AuditEvent",
    "AuditHead",
    "Base",
    "Bid",
    "BidStatus",
    "Campaign",
    "CampaignCapCounter",
    "Channel",
    "CommunicationPreference",
    "Consent",
    "ConsentText",
    "ConsumerOptOut",
    "DeliveryStatus",
    "DenialReason",
    "Deposit",
    "DepositStatus",
    "Disclosure",
    "FraudCase",
    "FraudCaseAction",
    "FraudCaseStatus",
    "FraudSignal",
    "HoldStatus",
    "IdempotencyRecord",
    "Job",
    "JobStatus",
    "Lead",
    "LeadBlindIndex",
    "LeadStatus",
    "LeadUpload",
    "LeadUploadChunk",
    "LeadUploadRow",
    "LeadVault",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerHold",
    "LedgerTransaction",
    "LegalDocumentKind",
    "LegalRequest",
    "LegalRequestStatus",
    "LegalSubjectKind",
    "LoginFailure",
    "MailCategory",
    "MailStatus",
    "MailSuppression",
    "MailTopic",
    "MatchingVersion",
    "MemberMessage",
    "OnBehalf",
    "Order",
    "OrderStatus",
    "OutboundMail",
    "Ping",
    "PingFingerprint",
    "PingOutcome",
    "PrivacyNotice",
    "PrivacyRequest",
    "PrivacyRequestEvent",
    "PrivacyThrottleHit",
    "ProofStatus",
    "RequestStatus",
    "RequestType",
    "Role",
    "SaleMode",
    "SaleVia",
    "TransactionKind",
    "UploadRowStatus",
    "UploadStatus",
    "User",
    "UserSession",
    "UserStatus",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
