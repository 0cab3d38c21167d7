"""A real SMTP server for tests (aiosmtpd in its own thread) that can be told how to answer."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer

from tests.support.net import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    at: float


@dataclass
class SmtpHandler:
    received: list[Received] = field(default_factory=list)
    data_replies: deque[str] = field(default_factory=deque)  # e.g. "451 4.3.0 try again"
    rcpt_replies: deque[str] = field(default_factory=deque)  # e.g. "550 5.1.1 no such user"
    mail_replies: deque[str] = field(default_factory=deque)  # e.g. "553 5.7.1 sender rejected"
    dead_mailboxes: set[str] = field(default_factory=set)
    allowed_senders: set[str] | None = None  # set: any other MAIL FROM is refused (553 5.7.1)
    delay: float = 0.0
    hold: threading.Event | None = None  # DATA waits until it is set (a stuck server)
    record_before_hold: bool = False  # True: the message is taken, then the reply is held
    rcpt_calls: int = 0
    data_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: Any
    ) -> str:
        if self.mail_replies:
            return self.mail_replies.popleft()
        if self.allowed_senders is not None and address not in self.allowed_senders:
            return "553 5.7.1 <" + address + ">: Sender address rejected: not owned by user"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        self.rcpt_calls += 1
        if address in self.dead_mailboxes:
            return "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown"
        if self.rcpt_replies:
            return self.rcpt_replies.popleft()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.data_replies:
            return self.data_replies.popleft()
        if self.record_before_hold:
            self._record(envelope)
        # aiosmtpd cancels this coroutine when the client's connection drops.
        while self.hold is not None and not self.hold.is_set():
            await asyncio.sleep(0.01)
        if not self.record_before_hold:
            self._record(envelope)
        return "250 2.0.0 Ok: queued"

    def _record(self, envelope: Any) -> None:
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg, time.time()))

    def delivery_ids(self) -> list[str]:
        with self.lock:
            return [str(r.message["X-Herald-Delivery-Id"]) for r in self.received]


class _Controller(Controller):
    def factory(self) -> SMTPServer:
        return SMTPServer(self.handler, decode_data=False, enable_SMTPUTF8=True, timeout=30)


class SmtpTestServer:
    def __init__(self) -> None:
        self.handler = SmtpHandler()
        self.port = free_port()
        self.controller = _Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpTestServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
