/** The server's HTTP query API (docs/api.md): what the app reads that is not synced data. */

export interface MemberHealth {
  readonly user_id: string;
  readonly display_name: string | null;
  readonly level: string;
  readonly connected: boolean;
  readonly last_seen_at: string | null;
  readonly outbox_age_ms: number | null;
  readonly client_id: string | null;
  readonly client_version: string | null;
}

export interface Page<T> {
  readonly project_id: string;
  readonly seq: number;
  readonly items: readonly T[];
  readonly next_cursor: string | null;
}

export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

async function get<T>(path: string, token: string): Promise<Page<T>> {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  if (!response.ok) {
    let reason = response.statusText;
    try {
      const body = (await response.json()) as { message?: string };
      if (typeof body.message === "string") reason = body.message;
    } catch {
      // not JSON: the status line says it
    }
    throw new ApiError(response.status, `${response.status} ${reason}`);
  }
  return (await response.json()) as Page<T>;
}

/** Every member's sync health, following the pages. */
export async function membersHealth(projectId: string, token: string): Promise<MemberHealth[]> {
  const items: MemberHealth[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < 100; page++) {
    const query: string = cursor === null ? "" : `?cursor=${encodeURIComponent(cursor)}`;
    const answer: Page<MemberHealth> = await get<MemberHealth>(`/api/v1/projects/${encodeURIComponent(projectId)}/members/health${query}`, token);
    items.push(...answer.items);
    cursor = answer.next_cursor;
    if (cursor === null) break;
  }
  return items;
}
