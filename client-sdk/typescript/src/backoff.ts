/**
 * Reconnect delays: exponential backoff with full jitter. The n-th consecutive failure waits
 * a uniformly random time in [0, min(cap, base * 2^n)), so clients cut off together do not
 * all come back at the same instant.
 */
export class Backoff {
  attempt = 0;

  constructor(readonly baseMs = 500, readonly capMs = 30_000, private readonly random: () => number = Math.random) {
    if (baseMs <= 0 || capMs < baseMs) throw new RangeError("backoff needs 0 < base <= cap");
  }

  ceiling(): number {
    return Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.attempt, 62));
  }

  nextDelay(): number {
    const delay = this.random() * this.ceiling();
    this.attempt += 1;
    return delay;
  }

  reset(): void {
    this.attempt = 0;
  }
}
