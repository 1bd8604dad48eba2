/**
 * An activity's photos: "Attach photo" (the camera on phones and tablets) works offline; each
 * photo shows this device's copy at once and the server's thumbnail once it is ready, with
 * where it stands (waiting, uploading, processing, ready, failed). Thumbnails need the
 * user's token, so they are fetched through the SDK and shown from object URLs.
 */
import type { AttachmentStatus } from "@fieldsync/client";
import { useEffect, useRef, useState } from "preact/hooks";

import type { AppStore } from "../store.js";

export function statusText(status: AttachmentStatus | null): string {
  if (status === null) return "…";
  switch (status.status) {
    case "local": return "On this device, uploads when online";
    case "uploading": return status.size ? `Uploading ${Math.floor(((status.received ?? 0) * 100) / status.size)}%` : "Uploading";
    case "uploaded": return "Uploaded, waiting for processing";
    case "processing": return "Making thumbnails";
    case "ready": return "Ready";
    case "failed": return `Failed: ${status.message ?? status.code ?? "unknown reason"}`;
    case "unknown": return "Not uploaded yet by its device";
  }
}

interface Shown {
  readonly url: string;
  readonly kind: "local" | "thumbnail";
}

function Photo({ store, attachmentId }: { store: AppStore; attachmentId: string }) {
  const [status, setStatus] = useState<AttachmentStatus | null>(null);
  const [shown, setShown] = useState<Shown | null>(null);
  const current = useRef<Shown | null>(null);

  // The status: again whenever the store moves (the attachment entity synced) or this
  // device's upload moves.
  useEffect(() => {
    let live = true;
    const update = (): void => void store.project.attachmentStatus(attachmentId).then((s) => live && setStatus(s), () => undefined);
    update();
    const off = store.project.onAttachments((ids) => ids.includes(attachmentId) && update());
    return () => {
      live = false;
      off();
    };
  }, [store, attachmentId, store.version]);

  // The picture: the thumbnail once ready, this device's copy before.
  useEffect(() => {
    if (status === null || current.current?.kind === "thumbnail") return;
    const wanted = status.status === "ready" ? "thumbnail" : current.current === null && status.hasLocalCopy ? "local" : null;
    if (wanted === null) return;
    let live = true;
    const load = async (): Promise<Shown | null> => {
      if (wanted === "thumbnail") {
        const file = await store.project.downloadAttachment(attachmentId, "small");
        return { url: URL.createObjectURL(new Blob([file.data as Uint8Array<ArrayBuffer>], { type: file.contentType })), kind: "thumbnail" };
      }
      const copy = await store.project.localCopy(attachmentId);
      return copy && { url: URL.createObjectURL(new Blob([copy.data as Uint8Array<ArrayBuffer>], { type: copy.contentType ?? "image/jpeg" })), kind: "local" };
    };
    load().then(
      (next) => {
        if (next === null) return;
        if (!live) return URL.revokeObjectURL(next.url);
        if (current.current) URL.revokeObjectURL(current.current.url);
        current.current = next;
        setShown(next);
      },
      () => undefined, // offline: the local copy stays, the thumbnail comes on a later status
    );
    return () => {
      live = false;
    };
  }, [store, attachmentId, status?.status, store.version]);

  useEffect(() => () => void (current.current && URL.revokeObjectURL(current.current.url)), []);

  return (
    <li class="photo" data-attachment-id={attachmentId} data-status={status?.status ?? ""}>
      {shown ? <img src={shown.url} alt={shown.kind === "thumbnail" ? "Photo" : "Photo (this device's copy)"} data-kind={shown.kind} /> : <div class="placeholder" aria-hidden="true" />}
      <span class="muted">{statusText(status)}</span>
    </li>
  );
}

export function Attachments({ store, activityId, ids, editable }: { store: AppStore; activityId: string; ids: readonly string[]; editable: boolean }) {
  const input = useRef<HTMLInputElement>(null);
  const chosen = async (): Promise<void> => {
    const el = input.current!;
    for (const file of Array.from(el.files ?? [])) await store.edit(activityId, (p) => p.attach("activity", activityId, file));
    el.value = "";
  };
  return (
    <section aria-labelledby="photos-title" class="attachments">
      <h2 id="photos-title">Photos</h2>
      {ids.length === 0 && <p class="muted">No photos.</p>}
      <ul class="photos">
        {ids.map((aid) => <Photo key={aid} store={store} attachmentId={aid} />)}
      </ul>
      <label class={editable ? "attach" : "attach disabled"}>
        Attach photo
        <input ref={input} id="attach-photo" type="file" accept="image/*" capture="environment" disabled={!editable} onChange={() => void chosen()} />
      </label>
    </section>
  );
}
