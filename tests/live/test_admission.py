"""Admission of unauthenticated connections: per-address and per-process caps, release."""

from __future__ import annotations

from fieldsync.live.admission import Admission, AdmissionLimits, Refusal, Ticket


def test_caps_per_address_then_per_process_and_tickets_release_once() -> None:
    admission = Admission(AdmissionLimits(max_unauthenticated=3, max_unauthenticated_per_address=2))
    first, second = admission.admit("10.0.0.1"), admission.admit("10.0.0.1")
    assert isinstance(first, Ticket)
    assert isinstance(second, Ticket)
    refused = admission.admit("10.0.0.1")
    assert isinstance(refused, Refusal)
    assert (refused.reason, refused.status) == ("unauthenticated_address", 429)
    other = admission.admit("10.0.0.2")
    assert isinstance(other, Ticket)
    full = admission.admit("10.0.0.3")
    assert isinstance(full, Refusal)
    assert (full.reason, full.status) == ("unauthenticated_process", 503)
    assert admission.unauthenticated == 3

    first.release()
    first.release()  # idempotent: authenticated, then closed
    assert admission.unauthenticated == 2
    assert isinstance(admission.admit("10.0.0.1"), Ticket)
    for ticket in (second, other):
        ticket.release()
    assert admission.unauthenticated == 1
    assert dict(admission._per_address) == {"10.0.0.1": 1}
