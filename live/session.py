"""One sync connection: a pump between a WebSocket and the protocol (``ServerProtocol``).

The protocol decides what every incoming frame means, which frames go out and in which
order; this shell only does the waiting: verifying the token, reading membership, the log
and snapshots, appending pushes, queueing the protocol's frames on the connection's send
queue (``live.outbox``) by their lane, so the order of frames on the wire is the order they
were queued.

Sending costs little, since a project's live change goes to every subscriber: while nothing
waits in a connection's queue and its socket takes data, a frame is written at once, with no
task switch; otherwise it is queued, and a writer task, which exists only while frames wait,
writes them, several at a time, whenever the socket takes data again. An idle connection
holds one task, the reader.

Three kinds of tasks call the protocol: the reader (this class's ``run``), one task per
project being snapshotted or caught up, and the live feed (``live.feed``), which hands each
piece of the log to every live subscriber. Each queues the frames its own call returned,
at once: a project's ``synced`` is queued in the same step as the feed learns the project
is live, so no live change can come before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

from fieldsync.auth.tokens import TokenClaims, TokenError, TokenVerifier
from fieldsync.live.admission import Admission, Ticket
from fieldsync.live.feed import (
    Hub,
    LivePiece,
    ProjectFeed,
    wire_changes,
    wire_conflicts,
    wire_updates,
)
from fieldsync.live.load_gate import DEFAULT_LOAD_LIMITS, LoadGate, LoadLimits
from fieldsync.live.log_reads import CatchUpReads, HeadReads
from fieldsync.live.membership_cache import MembershipCache
from fieldsync.live.outbox import DEFAULT_OUTBOX_LIMITS, Outbox, OutboxClosedError, OutboxLimits
from fieldsync.live.rate_limit import DEFAULT_RATE_LIMIT, RateLimit, TokenBucket
from fieldsync.live.status import StatusBoard
from fieldsync.live.sync_health import ClientHello, HealthRecorder
from fieldsync.live.ws_frames import binary_message
from fieldsync.model.limits import Limits
from fieldsync.model.merge import EntityChanges
from fieldsync.model.permissions import WRITE_LEVELS
from fieldsync.observability.log_limits import LogLimiter
from fieldsync.observability.logs import annotate
from fieldsync.observability.metrics import Metrics
from fieldsync.observability.request_ids import new_id
from fieldsync.store.errors import StoreError
from fieldsync.store.ports import ChangeLogPort, MembershipPort, SnapshotPort
from fieldsync.store.records import Accepted
from fieldsync.sync.connection import ConnectionState
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    ClientMessage,
    EntityAccepted,
    EntityRejected,
    EntityResult,
    Hello,
    ProjectCursor,
    Push,
    SnapshotEntity,
    Status,
    Subscribe,
    Unsubscribe,
    Welcome,
)
from fieldsync.sync.server_protocol import (
    Lane,
    Outgoing,
    ProtocolMisuseError,
    ServerProtocol,
)

log = logging.getLogger("fieldsync.connections")

CATCH_UP_BATCH = 500
SNAPSHOT_READ_BATCH = 200  # entities handed to the protocol at a time
CLOSE_GRACE_SECONDS = 10.0
# A client refused for its rate waits this long for the refusal: a reconnect loop stalls.
RATE_PENALTY_SECONDS = 1.0
# How long the fatal rate_limited error may take to go out before the socket is dropped.
DROP_GRACE_SECONDS = 1.0
# A connection must have said hello, and had it answered, this long after it opened.
HANDSHAKE_SECONDS = 10.0
# A client whose answers stay unread this long (its send queue full) is closed as too slow.
STALL_SECONDS = 30.0
# How many queued bytes the writer hands the socket at once: few system calls, while the
# socket's own buffer never holds much more than its high-water mark.
WRITE_BATCH_BYTES = 256 * 1024
# Pushes of one connection being appended at once while it reads its answers promptly: the
# reader goes on while they wait for the project's lock, so a client's pipelined pushes
# share a group commit (and their changes one fan-out round).
PUSHES_IN_FLIGHT = 4
NOT_A_MEMBER = "no such project, or you are not a member of it"
REMOVED = "you are no longer a member of this project"
DATABASE_DOWN = "the server cannot reach its database; try again later"


def connection_log_limiter(on_suppressed: Callable[[str], None] | None = None) -> LogLimiter:
    """Lines clients can cause: 5 a second (bursts of 20) for refusals and failures; the
    opening and closing lines of authenticated connections more, 50 a second (bursts of
    500), since a reconnect storm of real clients is worth seeing."""
    normal = (50.0, 500.0)
    return LogLimiter(
        on_suppressed=on_suppressed,
        per_event={"connection_opened": normal, "connection_closed": normal},
    )


@dataclass
class SyncServices:
    """What a session needs from the app, created once in the lifespan."""

    membership: MembershipPort
    snapshots: SnapshotPort
    changelog: ChangeLogPort
    hub: Hub
    verifier: TokenVerifier
    limits: Limits
    max_connections_per_user: int = 16
    outbox_limits: OutboxLimits = DEFAULT_OUTBOX_LIMITS
    rate_limit: RateLimit = DEFAULT_RATE_LIMIT
    handshake_seconds: float = HANDSHAKE_SECONDS
    stall_seconds: float = STALL_SECONDS
    sessions: dict[UUID, set[SyncSession]] = field(default_factory=dict)  # open, per user
    buckets: dict[UUID, TokenBucket] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    status: StatusBoard = field(default_factory=StatusBoard)
    admission: Admission = field(default_factory=Admission)
    log_limiter: LogLimiter = field(default_factory=lambda: connection_log_limiter())
    sync_health: HealthRecorder | None = None  # members' sync health (``live.sync_health``)
    load_limits: LoadLimits = DEFAULT_LOAD_LIMITS
    # What makes a resume cheap, and what refuses one the process cannot take now: made
    # from the fields above (``live.membership_cache``, ``live.log_reads``, ``live.load_gate``).
    members: MembershipCache = field(init=False)
    catch_ups: CatchUpReads = field(init=False)
    heads: HeadReads = field(init=False)
    load: LoadGate = field(init=False)
    welcome_limits: dict[str, int] = field(init=False)  # as ``welcome`` states them

    def __post_init__(self) -> None:
        self.status.listeners = self._welcomed
        self.welcome_limits = dataclasses.asdict(self.limits)
        self.members = MembershipCache(self.membership)
        self.catch_ups = CatchUpReads(self.changelog.catch_up, CATCH_UP_BATCH)
        self.heads = HeadReads(self.changelog.head)
        self.load = LoadGate(lambda: self.admission.unauthenticated, self.load_limits)

    def _welcomed(self) -> Iterator[SyncSession]:
        """Every connection welcomed and still open: those that hear the server's status."""
        for sessions in self.sessions.values():
            yield from sessions


def membership_removed(services: SyncServices, project_id: UUID, user_id: UUID) -> None:
    """A removal committed (in any process): end the user's streams of that project now."""
    services.members.forget(project_id, user_id)
    for session in list(services.sessions.get(user_id, ())):
        session.membership_removed(project_id)


def recheck_memberships(services: SyncServices) -> asyncio.Task[None]:
    """Check every open stream's membership again (removal notices may have been missed)."""
    services.members.forget_all()

    async def check() -> None:
        for sessions in list(services.sessions.values()):
            for session in list(sessions):
                with contextlib.suppress(StoreError):
                    await session.recheck_memberships()

    return asyncio.get_running_loop().create_task(check())


class Transport(Protocol):
    """The socket side of a session, as the shell sees it (``live.wire.SyncWire``)."""

    async def receive(self) -> bytes | str | None:
        """The client's next message; None once the connection is over."""
        ...

    def write_now(self, message: bytes) -> bool:
        """Write one whole WebSocket message (``live.ws_frames``) if the socket takes data
        now (its buffer is below its high-water mark); False: it must wait."""
        ...

    def write(self, messages: Sequence[bytes]) -> None:
        """Write whole WebSocket messages (``live.ws_frames``) in one go; once the
        connection is closed they are dropped."""
        ...

    def cork(self) -> None:
        """Hold small messages written from now on, to write them together at ``uncork``
        or at the end of the loop's turn, whichever comes first."""
        ...

    def uncork(self) -> None:
        """Write what was held, and write at once again."""
        ...

    def interrupt(self) -> None:
        """A deadline passed: the waiting ``receive`` raises TimeoutError."""
        ...

    async def drained(self) -> None:
        """Return once the socket takes data again, or the connection is gone."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake."""
        ...


class _LiveStream:
    """A project this connection streams live, as its feed sees it
    (``live.feed.LiveSubscription``): slotted, with methods rather than closures, since
    every idle socket holds one per project."""

    __slots__ = ("_name", "_session", "project_id")

    def __init__(self, session: SyncSession, project_id: UUID, name: str) -> None:
        self._session = session
        self.project_id = project_id
        self._name = name

    @property
    def cursor(self) -> int:
        return self._session._protocol.cursor(self._name) or 0

    def deliver(self, piece: LivePiece) -> None:
        self._session._deliver(self._name, piece)


class SyncSession:
    """One connection: the protocol, the send queue, and the tasks that stream projects.

    ``ticket`` is the connection's place among the unauthenticated ones
    (``live.admission``); it is given back once the hello is accepted, or when the
    connection ends. ``address`` is the client's address, for logs.
    """

    def __init__(
        self,
        services: SyncServices,
        transport: Transport,
        *,
        ticket: Ticket | None = None,
        address: str = "",
    ) -> None:
        self._services = services
        self._transport = transport
        self._ticket = ticket
        self._address = address
        self._protocol = ServerProtocol(services.limits)
        self._outbox = Outbox(services.outbox_limits, services.metrics.send_queues)
        self._user_id: UUID | None = None
        self._client_id: str | None = None
        self._client: ClientHello | None = None  # once accepted, for the sync health
        self._streams: dict[UUID, asyncio.Task[None]] = {}  # snapshot or catch-up under way
        self._live: dict[UUID, _LiveStream] = {}
        self._names: dict[UUID, str] = {}  # project ids as the client spelled them
        self._member_of: set[UUID] = set()  # membership confirmed on this connection
        self._strikes = 0  # frames refused in a row for the rate limit
        self._drop = False  # end without a closing handshake (an abusive peer)
        self._session_id = new_id()
        self._counted = False
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._next: asyncio.Task[bytes | str | None] | None = None  # read during the handshake
        # Pushes being appended (a dict for its 64 empty bytes, where a set takes 216).
        self._pushing: dict[asyncio.Task[None], None] = {}
        self._push_turn: asyncio.Future[None] | None = None  # set once the last push queued
        self._opened = time.monotonic()
        self._deadline = asyncio.get_running_loop().time() + services.handshake_seconds
        self._ended_by: str | None = None  # why the server ended it, for the closing line
        self._bad_frames = 0

    @property
    def session_id(self) -> str:
        """This connection's id, as ``welcome`` tells the client (and logs name it)."""
        return self._session_id

    # -- the pump ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self._protocol.closing:
                frame = await self._next_frame()
                if frame is None:
                    break
                await self._take(frame)
                # An idle connection waits here for its next frame: hold nothing of the last.
                del frame
        finally:
            if self._next is not None:
                self._next.cancel()
            for task in self._streams.values():
                task.cancel()
            if self._pushing:  # appends under way end on their own; their answers still go
                await asyncio.wait(self._pushing)
            for subscription in self._live.values():
                self._services.hub.leave(subscription)
            # Each stream refers back to the session: without this, a closed connection's
            # whole graph (session, protocol, wire, transport) waits for the cyclic
            # collector's next full pass instead of being freed as it ends.
            self._live.clear()
            if self._counted and self._user_id is not None:
                self._forget_user(self._user_id)
            if self._services.sync_health is not None:
                self._services.sync_health.closed(self._session_id)
            if self._ticket is not None:
                self._ticket.release()
            self._queue(self._protocol.data_to_send())
            self._outbox.close()
            writer = self._writer
            if writer is not None:
                with contextlib.suppress(Exception):
                    if self._drop:
                        await asyncio.wait_for(writer, DROP_GRACE_SECONDS)
                    else:
                        await writer
            requested = self._protocol.close_requested
            if requested is not None and not self._drop:
                with contextlib.suppress(Exception):
                    await self._transport.close(int(requested[0]), requested[1])
            self._log_end()

    async def _take(self, frame: bytes | str) -> None:
        """One frame from the client: its messages handled, the answers sent, in one write
        where they are small (a resume's ``welcome`` and ``synced``)."""
        limited = not self._within_rate()
        self._protocol.receive_frame(frame)
        self._count_refusals()
        self._transport.cork()
        try:
            for event in self._protocol.events_received():
                self._services.metrics.received(event)
                if limited:
                    self._rate_limited(event)
                else:
                    await self._handle(event)
            self._queue(self._protocol.data_to_send())
        finally:
            self._transport.uncork()

    async def _next_frame(self) -> bytes | str | None:
        """The client's next frame, read only once its answers so far have room to go out;
        None when the connection is over (closed by the client, or ended here)."""
        if self._next is not None:
            pending, self._next = self._next, None
            return await pending
        if self._protocol.state is ConnectionState.AWAITING_HELLO:
            # A plain timer: a third of what ``asyncio.timeout_at`` costs, on every upgrade.
            loop = asyncio.get_running_loop()
            overdue = loop.call_at(self._deadline, self._transport.interrupt)
            try:
                return await self._transport.receive()
            except TimeoutError:
                self._handshake_timed_out()
                return None
            finally:
                overdue.cancel()
        if self._pushing and self._outbox.queued_bytes:
            # A client behind on its answers gets one push at a time: the queue grows by one
            # answer at most past its soft bound, as without pipelining.
            await asyncio.wait(self._pushing)
        elif len(self._pushing) >= PUSHES_IN_FLIGHT:
            await asyncio.wait(self._pushing, return_when=asyncio.FIRST_COMPLETED)
        if not self._outbox.has_room:
            try:
                async with asyncio.timeout(self._services.stall_seconds):
                    await self._outbox.wait_for_room()
            except TimeoutError:
                self._too_slow(
                    f"it has not read its answers for {self._services.stall_seconds:g} s"
                )
                return None
        if self._protocol.closing:
            return None
        return await self._transport.receive()

    def _queue(self, frames: Sequence[Outgoing], shared: LivePiece | None = None) -> None:
        """Send frames that never wait: answers, errors, ``synced``, status, live changes.
        A frame that no longer fits means the client does not read: it is too slow.
        ``shared``: a live piece whose frame goes as the message built once for all."""
        for out in frames:
            if shared is not None and out is shared.prepared.outgoing:
                message = shared.message
            else:
                message = binary_message(out.frame)
            if not self._send(out, message):
                return

    async def _queue_bulk(self, frames: Sequence[Outgoing]) -> None:
        """Send a stream's frames in order; bulk ones wait while the client's queue is full
        (a slow reader slows its own snapshot). Raises OutboxClosedError once closed."""
        for out in frames:
            if out.lane is not Lane.BULK:
                self._queue((out,))
                continue
            message = binary_message(out.frame)
            if not self._send_now(message):
                await self._outbox.put_bulk(message)
                self._start_writer()
            self._services.metrics.sent(out.kind, len(out.frame))

    def _send_now(self, message: bytes) -> bool:
        """Write ``message`` at once if nothing waits before it and the socket takes data;
        False when it must be queued. Raises OutboxClosedError once the queue is closed."""
        if self._outbox.closed:
            raise OutboxClosedError
        # No writer means an empty queue: the writer ends only once it emptied it.
        return self._writer is None and self._transport.write_now(message)

    def _send(self, out: Outgoing, message: bytes) -> bool:
        """Write or queue ``message``, the whole WebSocket message of a frame that does not
        wait (live or control), and count it. False when nothing more is to be sent: the
        queue is closed, or the frame did not fit (the client is then told it is too slow).

        Run for every subscriber of every live piece, so it is kept flat."""
        outbox = self._outbox
        live = out.lane is Lane.LIVE
        if live:
            self._services.metrics.send_queues.observe(len(outbox))
        try:
            if not self._send_now(message):
                if not (outbox.put_live(message) if live else outbox.put_control(message)):
                    self._too_slow(f"its {out.kind} frames no longer fit in its send queue")
                    return False
                self._start_writer()
        except OutboxClosedError:
            return False
        self._services.metrics.sent(out.kind, len(out.frame))
        return True

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_frames())

    async def _write_frames(self) -> None:
        """Write what is queued, a batch at a time, whenever the socket takes data; end
        once the queue is empty (the next frame is then written at once again)."""
        try:
            while True:
                await self._transport.drained()
                batch = self._outbox.take(WRITE_BATCH_BYTES)
                if not batch:
                    return
                self._transport.write(batch)
        finally:
            self._writer = None

    def _handshake_timed_out(self) -> None:
        self._protocol.fail(
            ErrorCode.HANDSHAKE_TIMEOUT,
            f"no hello within {self._services.handshake_seconds:g} s of connecting",
            CloseCode.POLICY_VIOLATION,
        )

    def _count_refusals(self) -> None:
        for code in self._protocol.refusals_received():
            self._bad_frames += 1
            self._services.metrics.frame_refused(code.value)

    # -- log lines --------------------------------------------------------------------------

    def _log_limited(self, level: int, event: str, message: str, **fields: object) -> None:
        """One line that a client can cause, within the log rate (``LogLimiter``)."""
        left_out = self._services.log_limiter.allow(event, time.monotonic())
        if left_out is None:
            return
        extra: dict[str, object] = {"event": event, **fields}
        if left_out:
            extra["suppressed"] = left_out
        log.log(level, message, extra=extra)

    def _log_end(self) -> None:
        """One line per connection: how it went, with the ids it had by then."""
        requested = self._protocol.close_requested
        ended_by = self._ended_by or (requested[1] if requested is not None else "client_closed")
        fields: dict[str, object] = {
            "address": self._address,
            "duration_ms": round((time.monotonic() - self._opened) * 1000),
            "ended_by": ended_by,
            "bad_frames": self._bad_frames,
        }
        if self._client_id is not None:
            fields["client_id"] = self._client_id
        if self._user_id is not None:
            self._log_limited(logging.INFO, "connection_closed", "connection closed", **fields)
            return
        # It never got past the handshake: a refused token, no hello, a broken first frame.
        self._services.metrics.connection_refused(ended_by)
        self._log_limited(
            logging.WARNING,
            "connection_refused",
            f"connection refused: {ended_by}",
            reason=ended_by,
            **fields,
        )

    # -- the user's rate ---------------------------------------------------------------------

    def _forget_user(self, user_id: UUID) -> None:
        services = self._services
        sessions = services.sessions.get(user_id, set())
        sessions.discard(self)
        if not sessions:
            services.sessions.pop(user_id, None)
            bucket = services.buckets.get(user_id)
            # A user who left owing tokens keeps the debt: reconnecting buys no new burst.
            if bucket is not None and bucket.full(time.monotonic()):
                del services.buckets[user_id]

    def _bucket(self, user_id: UUID) -> TokenBucket:
        bucket = self._services.buckets.get(user_id)
        if bucket is None:
            bucket = self._services.buckets[user_id] = TokenBucket(
                self._services.rate_limit, time.monotonic()
            )
        return bucket

    def _within_rate(self) -> bool:
        """Whether this frame fits the user's message rate (the hello is charged there)."""
        if self._protocol.state is not ConnectionState.OPEN or self._user_id is None:
            return True
        if self._bucket(self._user_id).take(time.monotonic()):
            self._strikes = 0
            return True
        return False

    def _rate_limited(self, event: ClientMessage) -> None:
        """Refuse a message over the rate; close once the client plainly will not slow down."""
        self._strikes += 1
        limit = self._services.rate_limit
        if self._strikes >= limit.max_strikes:
            # Dropped without a closing handshake: a flooding peer is not trusted to answer
            # one, and while waiting for it the server would go on reading its flood. Its
            # user owes a burst, so a reconnect at once is refused at the hello.
            if self._user_id is not None:
                self._bucket(self._user_id).owe_a_burst(time.monotonic())
            self._protocol.fail(
                ErrorCode.RATE_LIMITED,
                f"{self._strikes} messages in a row over the rate limit "
                f"({limit.rate:g} per second per user)",
                CloseCode.POLICY_VIOLATION,
            )
            self._drop = True
            return
        self._queue(
            self._protocol.refuse_message(
                event,
                ErrorCode.RATE_LIMITED,
                f"over the rate limit of {limit.rate:g} messages per second per user; "
                "this message was not processed: send it again later",
            )
        )

    # -- events -------------------------------------------------------------------------------

    async def _handle(self, event: ClientMessage) -> None:
        try:
            if isinstance(event, Hello):
                await self._hello(event)
            elif isinstance(event, Subscribe):
                await self._subscribe(event.project)
            elif isinstance(event, Unsubscribe):
                self._unsubscribed(event.project_id)
            elif isinstance(event, Push):
                self._start_push(event)
        except StoreError as exc:
            self._database_failed(event, exc)

    def _database_failed(self, event: ClientMessage, exc: StoreError) -> None:
        """The database failed while handling ``event``: the connection stays, the client is
        told what did not happen (and retries it)."""
        self._log_limited(
            logging.WARNING,
            "database_unavailable",
            f"database unavailable while handling {type(event).__name__}: {exc}",
        )
        if isinstance(event, Push):
            self._services.metrics.push_refused(ErrorCode.SERVER_UNAVAILABLE.value)
            self._queue(
                self._protocol.refuse_push(
                    event.push_id, ErrorCode.SERVER_UNAVAILABLE, DATABASE_DOWN
                )
            )
            return
        wanted: Sequence[ProjectCursor] = event.projects if isinstance(event, Hello) else ()
        if isinstance(event, Subscribe):
            wanted = (event.project,)
        for project in wanted:
            with contextlib.suppress(ValueError):
                if (
                    UUID(project.project_id) in self._streams
                    or UUID(project.project_id) in self._live
                ):
                    continue
            self._project_error(project.project_id, ErrorCode.SERVER_UNAVAILABLE, DATABASE_DOWN)

    async def _verify_before_next_frame(self, token: str) -> TokenClaims | None:
        """Check a token that needs waiting for (a provider's keys) while reading on: a
        frame that arrives before the welcome is sent is a handshake violation (the protocol
        answers it), and the whole handshake must end by the deadline. None when the
        handshake ended here; raises TokenError."""
        verifying = asyncio.ensure_future(self._services.verifier.verify(token))
        reading = asyncio.ensure_future(self._transport.receive())
        try:
            done, _ = await asyncio.wait(
                {verifying, reading},
                timeout=max(0.0, self._deadline - asyncio.get_running_loop().time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            verifying.cancel()
            reading.cancel()
            raise
        if reading in done:  # the client spoke before the welcome (or left)
            verifying.cancel()
            frame = reading.result()
            if frame is not None:
                self._protocol.receive_frame(frame)
                self._count_refusals()
            return None
        if not done:
            verifying.cancel()
            reading.cancel()
            self._handshake_timed_out()
            return None
        self._next = reading
        return verifying.result()

    def _spoke_before_welcome(self) -> bool:
        """Whether a frame already waits behind the hello: the client spoke before the
        welcome (a handshake violation, which the protocol answers), or it left. Looked at
        without waiting or a task: one step of ``receive`` returns at once when a frame
        waits; otherwise the read is abandoned where it waits, which is safe (``receive``
        may be cancelled there)."""
        reading = self._transport.receive()
        try:
            reading.send(None)
        except StopIteration as waiting:
            frame: bytes | str | None = waiting.value
            if frame is not None:
                self._protocol.receive_frame(frame)
                self._count_refusals()
            return True
        reading.close()
        return False

    async def _hello(self, hello: Hello) -> None:
        self._client_id = hello.client_id
        try:
            # A token checked by CPU work alone is checked here, with no task and no wait:
            # no frame can be read meanwhile, so one already waiting came before the welcome.
            claims = self._services.verifier.verify_now(hello.token)
            if claims is None:
                claims = await self._verify_before_next_frame(hello.token)
            elif self._spoke_before_welcome():
                return
            if claims is None:
                return
        except TokenError as exc:
            if exc.unavailable:
                self._log_limited(
                    logging.WARNING, "token_check_failed", f"cannot check tokens: {exc}"
                )
                self._protocol.refuse(
                    ErrorCode.SERVER_UNAVAILABLE,
                    "the server cannot check tokens right now; try again later",
                    CloseCode.TRY_AGAIN_LATER,
                )
                return
            code = ErrorCode.TOKEN_EXPIRED if exc.expired else ErrorCode.INVALID_TOKEN
            self._ended_by = f"{code.value}: {exc}"
            self._protocol.refuse(code, str(exc), CloseCode.UNAUTHORIZED)
            return
        if not self._bucket(claims.user_id).take(time.monotonic()):
            # A hello costs a message too, so reconnecting in a loop buys no relief; the
            # refusal is slow on purpose, so a reconnect loop mostly waits.
            await asyncio.sleep(RATE_PENALTY_SECONDS)
            self._protocol.refuse(
                ErrorCode.RATE_LIMITED,
                "over the message rate limit; reconnect later",
                CloseCode.POLICY_VIOLATION,
            )
            self._drop = True
            return
        open_now = len(self._services.sessions.get(claims.user_id, ()))
        if open_now >= self._services.max_connections_per_user:
            self._protocol.refuse(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"at most {self._services.max_connections_per_user} connections per user",
                CloseCode.TOO_MANY_CONNECTIONS,
            )
            return
        self._services.sessions.setdefault(claims.user_id, set()).add(self)
        self._counted = True
        self._user_id = claims.user_id
        self._client = ClientHello(
            claims.user_id,
            hello.client_id,
            hello.client_version,
            hello.outbox_age_ms,
            datetime.now(UTC),
        )
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None
        annotate(user_id=str(claims.user_id), client_id=self._client_id)
        self._log_limited(
            logging.INFO,
            "connection_opened",
            "connection opened",
            address=self._address,
            version=self._protocol.version,
            projects=len(hello.projects),
        )
        self._protocol.accept(
            Welcome(
                version=self._protocol.version or 1,
                user_id=str(claims.user_id),
                session_id=self._session_id,
                limits=self._services.welcome_limits,
            )
        )
        self._queue(self._protocol.data_to_send())
        self._services.status.watch(self)
        # Still under way (``live.load_gate``) while its streams start (their membership
        # reads): each then counts as catching up, or has gone live.
        load = self._services.load
        load.starting += 1
        try:
            for project in hello.projects:
                await self._subscribe(project)
        finally:
            load.starting -= 1

    def status_changed(self, status: Status) -> None:
        """The server's status changed (``live.status``): tell the client."""
        self._queue(self._protocol.status(status))

    # -- membership ----------------------------------------------------------------------------

    async def _level(self, project_id: str, *, fresh: bool = False) -> tuple[UUID, str] | None:
        """The caller's level in the project; None for unknown and forbidden alike. As this
        process recently read it (``live.membership_cache``: forgotten as soon as any
        process removes the member), or with ``fresh`` from the database now."""
        try:
            project = UUID(project_id)
        except ValueError:
            return None
        assert self._user_id is not None
        if fresh:
            level = await self._services.membership.level(project, self._user_id)
        else:
            level = await self._services.members.level(project, self._user_id)
        if level is None:
            return None
        self._member_of.add(project)
        return project, level

    def _refusal(self, project_id: str) -> tuple[ErrorCode, str]:
        """Why a project is refused: unknown and forbidden alike, unless this connection
        already saw the user as a member (then saying so reveals nothing new)."""
        with contextlib.suppress(ValueError):
            if UUID(project_id) in self._member_of:
                return ErrorCode.MEMBERSHIP_REMOVED, REMOVED
        return ErrorCode.PROJECT_UNAVAILABLE, NOT_A_MEMBER

    def _project_error(self, spelled: str, code: ErrorCode, message: str) -> None:
        self._queue(self._protocol.end_stream(spelled, code, message, spelled))

    def membership_removed(self, project: UUID) -> None:
        """The user was taken out of ``project``: stop its stream, say why, refuse pushes."""
        if project not in self._member_of:
            return
        if self._stop_stream(project):
            self._project_error(
                self._names.get(project, str(project)), ErrorCode.MEMBERSHIP_REMOVED, REMOVED
            )

    async def recheck_memberships(self) -> None:
        """End the streams of projects the user is no longer a member of (one query)."""
        streamed = list(self._streams.keys() | self._live.keys())
        if self._user_id is None or not streamed:
            return
        still = await self._services.membership.still_member_of(self._user_id, streamed)
        for project in streamed:
            if project not in still:
                self.membership_removed(project)

    # -- project streams -----------------------------------------------------------------------

    async def _subscribe(self, wanted: ProjectCursor) -> None:
        access = await self._level(wanted.project_id)
        if access is None:
            self._project_error(wanted.project_id, *self._refusal(wanted.project_id))
            return
        project, _ = access
        if project in self._streams or project in self._live:
            return  # already syncing it
        if self._services.sync_health is not None and self._client is not None:
            self._services.sync_health.opened(self._session_id, project, self._client)
        self._names[project] = wanted.project_id
        if self._resumed_at_head(project, wanted):
            return
        task = asyncio.create_task(self._sync_project(project, wanted))
        self._streams[project] = task
        load = self._services.load
        load.stream_started()

        def finished(done: asyncio.Task[None]) -> None:
            load.stream_ended(live=project in self._live)
            if self._streams.get(project) is done:
                del self._streams[project]

        task.add_done_callback(finished)

    def _resumed_at_head(self, project: UUID, wanted: ProjectCursor) -> bool:
        """The common resume, done at once with no task: a cursor at the head the project's
        feed has reached has nothing to read, and the feed hands over what comes after it.
        False when a snapshot or a catch-up is needed (a task of its own does it)."""
        feed = self._services.hub.feed(project)
        if wanted.cursor is None or feed.head is None or wanted.cursor != feed.head:
            return False
        name = str(project)
        self._protocol.resume(name, wanted.cursor)
        if self._protocol.cursor(name) is not None:  # None: the connection is closing
            self._go_live(project, name, feed)
            self._services.load.went_live()
        return True

    def _go_live(self, project: UUID, name: str, feed: ProjectFeed) -> None:
        """One step, no await: synced is queued before the feed can hand over a change."""
        subscription = _LiveStream(self, project, name)
        self._queue(self._protocol.go_live(name))
        feed.try_go_live(subscription)
        self._live[project] = subscription

    def _unsubscribed(self, project_id: str) -> None:
        """The protocol has ended the stream; stop the work for it."""
        with contextlib.suppress(ValueError):
            self._stop_stream(UUID(project_id))

    def _stop_stream(self, project: UUID) -> bool:
        """End the project's snapshot, catch-up or live stream; False if there was none."""
        task = self._streams.pop(project, None)
        if task is not None:
            task.cancel()
        subscription = self._live.pop(project, None)
        if subscription is not None:
            self._services.hub.leave(subscription)
        return task is not None or subscription is not None

    async def _sync_project(self, project: UUID, wanted: ProjectCursor) -> None:
        """Snapshot (if asked), catch up from the log, then go live.

        A cursor at the head the project's feed has reached goes live with no read at all:
        the feed hands over everything after it. Clients resuming the same project at once
        share the reads they need (``live.log_reads``)."""
        name = str(project)
        services = self._services
        try:
            if wanted.cursor is None:
                await self._send_snapshot(project)
            else:
                reached = services.hub.feed(project).head
                if reached is None or wanted.cursor > reached:
                    head = await services.heads.at_least(project, wanted.cursor)
                    if wanted.cursor > head:
                        self._project_error(
                            wanted.project_id,
                            ErrorCode.CURSOR_AHEAD,
                            f"cursor {wanted.cursor} is beyond the project's head {head}",
                        )
                        return
                self._protocol.resume(name, wanted.cursor)
            while True:
                cursor = self._protocol.cursor(name)
                if cursor is None:
                    return  # the stream ended meanwhile (an unsubscribe)
                feed = services.hub.feed(project)
                if feed.head is not None and feed.can_go_live(cursor):
                    break
                piece = await services.catch_ups.catch_up(project, cursor)
                if piece.changes:
                    await self._queue_bulk(
                        self._protocol.catch_up(
                            name, wire_changes(piece.changes), wire_updates(piece.conflicts)
                        )
                    )
                    continue
                if feed.can_go_live(cursor):
                    break
            first = feed.head is None
            self._go_live(project, name, feed)
            if first:
                # This stream gave the feed its head: a commit whose notification came
                # before the feed existed is picked up here.
                feed.poke(await services.changelog.head(project))
        except (OutboxClosedError, asyncio.CancelledError):
            return
        except StoreError as exc:
            self._log_limited(
                logging.WARNING,
                "project_sync_failed",
                f"syncing project {project} failed: {exc}",
                project_id=name,
            )
            self._project_error(
                self._names.get(project, name),
                ErrorCode.SERVER_UNAVAILABLE,
                "the server could not read the log",
            )

    async def _send_snapshot(self, project: UUID) -> None:
        name = str(project)
        async with self._services.snapshots.open(project) as snapshot:
            count = await snapshot.count()
            await self._queue_bulk(self._protocol.begin_snapshot(name, snapshot.cursor, count))
            batch: list[SnapshotEntity] = []
            async for entity in snapshot.entities():
                batch.append(SnapshotEntity(entity.entity_type, entity.entity_id, entity.document))
                if len(batch) >= SNAPSHOT_READ_BATCH:
                    await self._queue_bulk(self._protocol.snapshot_entities(name, batch))
                    batch = []
            await self._queue_bulk(self._protocol.snapshot_entities(name, batch))
            records = wire_conflicts(await snapshot.conflicts())
            await self._queue_bulk(self._protocol.snapshot_conflicts(name, records))
            await self._queue_bulk(self._protocol.end_snapshot(name))
            self._services.metrics.snapshot_served(
                "websocket", project, snapshot.document_bytes, snapshot.started
            )

    def _deliver(self, project: str, piece: LivePiece) -> None:
        """The live feed hands this client a piece of the log: the message built once for
        every subscriber goes as is, unless this client holds part of it already."""
        try:
            frames = self._protocol.deliver_live(project, piece.prepared, piece.updates)
        except ProtocolMisuseError:
            # A gap would mean a change this client never gets: resuming from its cursor
            # is always right, so end the connection that way rather than lose one.
            log.exception("live delivery out of order for project %s", project)
            self._too_slow("the live feed skipped changes")
            return
        if len(frames) == 1 and frames[0] is piece.prepared.outgoing:
            self._send(frames[0], piece.message)  # the common case: the next piece, as is
        elif frames:  # none: the client holds the piece already (or the stream is not live)
            self._queue(frames, piece)

    def _too_slow(self, why: str) -> None:
        """The client does not take what is sent to it (a live frame or an answer did not fit,
        or its answers went unread too long): tell it to resume from its cursor, then close.

        Queued frames are dropped (the client will fetch them again from its cursor) so the
        error is next on the wire; if the client does not even take that within
        ``CLOSE_GRACE_SECONDS``, the connection is closed anyway. Nothing more is read.
        """
        if self._ended_by is not None and self._closer is not None:
            return
        self._ended_by = f"too_slow: {why}"
        self._outbox.discard_pending()
        self._protocol.fail(
            ErrorCode.TOO_SLOW,
            "you fell too far behind; reconnect and resume from your last cursor",
            CloseCode.TOO_SLOW,
        )
        self._queue(self._protocol.data_to_send())
        self._outbox.close()
        self._closer = asyncio.get_running_loop().create_task(self._close_when_flushed())

    async def _close_when_flushed(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_GRACE_SECONDS)
        # Closing also wakes the reader, so the session ends even if the client is silent.
        await self._transport.close(int(CloseCode.TOO_SLOW), "too slow: resume from your cursor")

    # -- pushes -------------------------------------------------------------------------------

    def _start_push(self, push: Push) -> None:
        """Append ``push`` while the reader goes on. Pushes enter the change log in the order
        they arrived: each waits for the one before it to be queued for its project's lock
        (``ChangeLog.append`` queues before it first yields), so a push that builds on the
        previous one's changes always finds them."""
        loop = asyncio.get_running_loop()
        previous, turn = self._push_turn, loop.create_future()
        self._push_turn = turn
        task = loop.create_task(self._pipelined_push(push, previous, turn))
        self._pushing[task] = None
        task.add_done_callback(self._push_done)

    def _push_done(self, task: asyncio.Task[None]) -> None:
        self._pushing.pop(task, None)

    async def _pipelined_push(
        self, push: Push, previous: asyncio.Future[None] | None, turn: asyncio.Future[None]
    ) -> None:
        try:
            await self._push(push, previous, turn)
        except StoreError as exc:
            self._database_failed(push, exc)
        except Exception:
            # A fault of ours: the push gets an answer (retrying it is always safe) and the
            # connection and its other pushes go on.
            log.exception(
                "push %s failed unexpectedly", push.push_id, extra={"event": "push_failed"}
            )
            with contextlib.suppress(ProtocolMisuseError):  # unless it was answered already
                self._queue(
                    self._protocol.refuse_push(
                        push.push_id,
                        ErrorCode.INTERNAL_ERROR,
                        "the server failed during this push; it may or may not be stored: "
                        "send it again (a retry returns the same seqs)",
                    )
                )
        finally:
            if not turn.done():  # refused, or failed before its turn: pass the turn on
                if previous is None or previous.done():
                    turn.set_result(None)
                else:
                    previous.add_done_callback(lambda _: _pass_turn(turn))

    async def _push(
        self, push: Push, previous: asyncio.Future[None] | None, turn: asyncio.Future[None]
    ) -> None:
        started = time.monotonic()
        # The level recently read decides only the answer's shape (refused whole, or
        # appended): the append reads the writer again under the project's lock, in its
        # transaction, and that is the check that counts. So a write level remembered saves
        # a query per push; a level that may not write is read again before a refusal,
        # since a promotion is not announced to the cache as a removal is.
        access = await self._level(push.project_id)
        if access is not None and access[1] not in WRITE_LEVELS:
            access = await self._level(push.project_id, fresh=True)
        if previous is not None:
            await asyncio.shield(previous)
        if access is None:
            code, message = self._refusal(push.project_id)
            self._services.metrics.push_refused(code.value)
            self._queue(self._protocol.refuse_push(push.push_id, code, message))
            return
        project, level = access
        if level not in WRITE_LEVELS:
            self._services.metrics.push_refused(ErrorCode.FORBIDDEN.value)
            self._queue(
                self._protocol.refuse_push(
                    push.push_id, ErrorCode.FORBIDDEN, f"a {level} may not change this project"
                )
            )
            return
        batch = [EntityChanges(e.entity_type, e.entity_id, e.changes) for e in push.entities]
        try:
            assert self._user_id is not None
            turn.set_result(None)  # wakes the next push only after this one has queued
            results = await self._services.changelog.append(
                project, batch, str(self._user_id), as_member=self._user_id
            )
        except StoreError as exc:
            self._log_limited(
                logging.WARNING,
                "push_failed",
                f"push {push.push_id} to project {project} failed: {exc}",
                project_id=str(project),
            )
            self._services.metrics.push_refused(ErrorCode.SERVER_UNAVAILABLE.value)
            self._queue(
                self._protocol.refuse_push(
                    push.push_id,
                    ErrorCode.SERVER_UNAVAILABLE,
                    "the database failed during this push; it may or may not be stored: "
                    "send it again (a retry returns the same seqs)",
                )
            )
            return
        self._services.metrics.push_committed(started, push, results)
        entity_results: list[EntityResult] = []
        for result in results:
            if isinstance(result, Accepted):
                entity_results.append(EntityAccepted(result.entity_id, result.seqs))
            else:
                rejection = result.rejection
                entity_results.append(
                    EntityRejected(
                        result.entity_id,
                        rejection.code.value,
                        rejection.message,
                        dict(rejection.details),
                    )
                )
        self._queue(self._protocol.answer_push(push.push_id, push.project_id, entity_results))


def _pass_turn(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)
