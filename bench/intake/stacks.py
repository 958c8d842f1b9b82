"""Reads py-spy's raw (collapsed) stacks and says where the server's CPU goes.

Two views of the same samples:

* **by component**: each sample goes to the innermost frame that belongs to a known library
  (a phone number check inside a pydantic validator counts as phonenumbers, an asyncpg call
  made by SQLAlchemy counts as asyncpg);
* **by step of the request**: the share of samples whose stack passes through a step of the
  intake (authentication, duplicate check, sealing, commit…), inclusive of what it calls."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# (label, pattern on "function (path:line)"), innermost match wins, first pattern wins.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("AES-GCM sealing (cryptography)", r"cryptography/|leadmarket/kit/keyring\.py"),
    ("HMAC / SHA-256 / HKDF", r"leadmarket/kit/crypto\.py|\bhmac\.py|hashlib"),
    ("phonenumbers", r"phonenumbers/"),
    ("email-validator", r"email_validator/|\bidna/"),
    ("pydantic validation / serialisation", r"pydantic/|pydantic_core"),
    ("asyncpg driver", r"asyncpg/"),
    ("aiosqlite / sqlite3 driver", r"aiosqlite/|sqlite3/"),
    ("SQLAlchemy (ORM, Core, pool)", r"sqlalchemy/"),
    ("JSON (stdlib json)", r"\bjson/"),
    ("logging", r"\blogging/"),
    ("uvicorn / httptools (HTTP server)", r"uvicorn/|httptools"),
    ("FastAPI / Starlette (routing, DI, middleware)", r"fastapi/|starlette/"),
    ("thread pool hand-offs (anyio, threading)", r"anyio/|\bthreading\.py|concurrent/"),
    ("leadmarket middleware", r"leadmarket/kit/http\.py"),
    ("leadmarket own code", r"leadmarket/"),
    ("event loop (asyncio, uvloop)", r"asyncio/|uvloop"),
)

# (label, pattern): inclusive share of samples whose stack passes through the frame.
STEPS: tuple[tuple[str, str], ...] = (
    ("whole request (ASGI app)", r"^(Starlette|FastAPI)\.__call__ "),
    ("middleware stack (leadmarket.kit.http)", r"Middleware\.__call__ \(leadmarket/"),
    (
        "body parsing + LeadIn validation (FastAPI)",
        r"request_body_to_args|_validate_body|"
        r"_extract_form_body|get_request_handler.*:(2[0-9]{2}|30[0-9])\)",
    ),
    ("authenticate (API key + user lookup)", r"^authenticate \("),
    ("post_lead handler", r"^post_lead \("),
    ("  request fingerprint (model_dump)", r"^request_fingerprint \("),
    ("  prepare_lead", r"^prepare_lead \("),
    ("    seal_fields (AES-GCM, wrap)", r"^seal_fields \("),
    ("    blind-index digests (HMAC)", r"^BlindIndexer\.digest \("),
    ("    quality.contact_signals", r"^contact_signals \("),
    ("write_leads (group commit writer)", r"^write_leads(_postgres)? \("),
    ("  _lock (advisory locks)", r"^_lock \("),
    ("  _check_credentials (API keys again)", r"^_check_credentials \(|^_refuse_keys \("),
    ("  _find (replays, opt-outs, duplicates, velocity)", r"^_find \(|^find \(leadmarket/"),
    ("  created_answer (201 body)", r"^created_answer \("),
    ("  _insert (six tables)", r"^_insert \(|^insert_batch \("),
    (
        "  record_intake_signals (fraud)",
        r"^record_intake_signals \(|^intake_signal_rows_through_driver \(",
    ),
    ("response serialisation (FastAPI)", r"^serialize_response \(|^_prepare_response_content \("),
    ("commit / rollback / close (TransactionalRoute)", r"^_finish \(leadmarket/"),
    (
        "sync dependency in thread pool",
        r"^run_in_threadpool \(|^to_thread\.run_sync|"
        r"WorkerThread\.run \(",
    ),
)


# SQLAlchemy's async layer runs the ORM in greenlets; py-spy shows a greenlet's stack on its
# own, rooted at the session method, without the coroutines that called it.
GREENLET_ROOT = re.compile(r"^((Async)?Session|(Async)?Connection)\.(\w+) ")
THREAD_ROOT = re.compile(r"^Thread\._bootstrap ")


@dataclass(frozen=True)
class Profile:
    samples: int
    components: list[tuple[str, int]]
    steps: list[tuple[str, int]]
    roots: list[tuple[str, int]]


def _stacks(path: Path) -> Iterable[tuple[list[str], int]]:
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def analyse(path: Path) -> Profile:
    components: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    roots: Counter[str] = Counter()
    compiled = [(label, re.compile(p)) for label, p in COMPONENTS]
    step_patterns = [(label, re.compile(p)) for label, p in STEPS]
    total = 0
    for frames, count in _stacks(path):
        total += count
        for frame in reversed(frames):
            label = next((lbl for lbl, rx in compiled if rx.search(frame)), None)
            if label is not None:
                components[label] += count
                break
        else:
            components["other (interpreter, stdlib)"] += count
        for label, rx in step_patterns:
            if any(rx.search(frame) for frame in frames):
                steps[label] += count
        greenlet = GREENLET_ROOT.match(frames[0])
        if greenlet is not None:
            roots[f"SQLAlchemy greenlet under {greenlet.group(1)}.{greenlet.group(4)}()"] += count
        elif THREAD_ROOT.match(frames[0]):
            roots["other threads (thread pool)"] += count
        else:
            roots["event loop thread (coroutines, callbacks)"] += count
    return Profile(
        samples=total,
        components=components.most_common(),
        steps=[(label, steps[label]) for label, _ in STEPS],
        roots=roots.most_common(),
    )


def report(profile: Profile, cpu_ms_per_lead: float | None) -> str:
    """The two views as text; with the server's measured CPU per lead, shares become ms."""

    def row(label: str, count: int) -> str:
        share = count / max(profile.samples, 1)
        ms = f"{share * cpu_ms_per_lead:8.3f} ms" if cpu_ms_per_lead else ""
        return f"  {label:52}{100 * share:6.1f}% {ms}"

    lines = [f"{profile.samples} samples of the server's busy time", "by component (innermost):"]
    lines += [row(label, count) for label, count in profile.components]
    lines.append("by step of the request (inclusive; the event loop's stacks only):")
    lines += [row(label, count) for label, count in profile.steps]
    lines.append("by stack root:")
    lines += [row(label, count) for label, count in profile.roots]
    return "\n".join(lines)
