/**
 * Reconnect delays: exponential backoff with full jitter. The n-th consecutive failure waits
 * a uniformly random time in [0, min(cap, base * 2^n)), so clients cut off together do not
 * all come back at the same instant. A server that says when to come back (`Retry-After`) is
 * obeyed: the wait is then at least that hint, spread over up to half as long again, so a
 * refused crowd does not return in one wave either.
 */
export class Backoff {
  attempt = 0;

  constructor(readonly baseMs = 500, readonly capMs = 30_000, private readonly random: () => number = Math.random) {
    if (baseMs <= 0 || capMs < baseMs) throw new RangeError("backoff needs 0 < base <= cap");
  }

  ceiling(): number {
    return Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.attempt, 62));
  }

  /** The wait before the next attempt; `atLeastMs` is the server's retry hint. */
  nextDelay(atLeastMs = 0): number {
    let delay = this.random() * this.ceiling();
    this.attempt += 1;
    if (atLeastMs > 0) delay = Math.max(delay, atLeastMs * (1 + 0.5 * this.random()));
    return delay;
  }

  reset(): void {
    this.attempt = 0;
  }
}
/** The longest a server's retry hint is obeyed. */
export const MAX_RETRY_AFTER_MS = 600_000;

/** A `Retry-After` header in ms (seconds as a number; a date is not sent by fieldsync), bounded;
 * 0 when there is none. */
export function retryAfterMs(header: string | undefined): number {
  const seconds = Number(header);
  return header && Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds * 1000, MAX_RETRY_AFTER_MS) : 0;
}
