-- Attachments, finished (docs/attachments.md): the references from entities in the read
-- models, the age of an unfinished upload, and reserving an upload in one round trip.

-- The attachment ids an activity or location lists (its `attachments` field), so garbage
-- collection reads references from the read models instead of loading documents. NULL
-- means the row was written before this column existed: the collector leaves such a
-- project alone until `fieldsync rebuild-read-models` has filled it in.
ALTER TABLE rm_activities ADD COLUMN attachments text[];
ALTER TABLE rm_locations ADD COLUMN attachments text[];

-- Abandoned uploads are found by the time their last part was stored.
CREATE INDEX attachment_uploads_by_age ON attachment_uploads (updated_at);

-- Reserve an upload: return the upload already recorded under this id, or refuse
-- ('attachment_id_taken', 'too_many_attachments', 'too_many_uploads'), or record it. The
-- project's advisory lock is taken first and every statement after it reads a fresh
-- snapshot (a volatile function in READ COMMITTED), so concurrent first parts cannot both
-- slip under a limit. `same_content`: the project already holds an attachment of these
-- bytes (the upload may then finish at once).
CREATE FUNCTION attachment_begin_upload(
    p_attachment_id text, p_project_id uuid, p_sha256 text, p_size bigint,
    p_content_type text, p_file_name text, p_uploaded_by uuid,
    p_max_per_project bigint, p_max_per_user bigint
) RETURNS TABLE (
    refusal text, attachment_id text, project_id uuid, sha256 text, size bigint,
    content_type text, file_name text, uploaded_by uuid, received bigint, parts bigint[],
    same_content boolean
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    recorded attachment_uploads%ROWTYPE;
    same boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_project_id::text, 7));
    SELECT EXISTS (
        SELECT 1 FROM attachments a WHERE a.project_id = p_project_id
            AND a.sha256 = p_sha256 AND a.status <> 'deleted'
    ) INTO same;
    SELECT * INTO recorded FROM attachment_uploads u WHERE u.attachment_id = p_attachment_id;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM documents d WHERE d.entity_id = p_attachment_id)
           OR EXISTS (SELECT 1 FROM attachments a WHERE a.attachment_id = p_attachment_id) THEN
            RETURN QUERY SELECT 'attachment_id_taken', NULL::text, NULL::uuid, NULL::text,
                NULL::bigint, NULL::text, NULL::text, NULL::uuid, NULL::bigint,
                NULL::bigint[], same;
            RETURN;
        END IF;
        IF (SELECT count(*) FROM attachments a WHERE a.project_id = p_project_id
                AND a.status <> 'deleted')
           + (SELECT count(*) FROM attachment_uploads u WHERE u.project_id = p_project_id)
           >= p_max_per_project THEN
            RETURN QUERY SELECT 'too_many_attachments', NULL::text, NULL::uuid, NULL::text,
                NULL::bigint, NULL::text, NULL::text, NULL::uuid, NULL::bigint,
                NULL::bigint[], same;
            RETURN;
        END IF;
        IF (SELECT count(*) FROM attachment_uploads u WHERE u.project_id = p_project_id
                AND u.uploaded_by = p_uploaded_by) >= p_max_per_user THEN
            RETURN QUERY SELECT 'too_many_uploads', NULL::text, NULL::uuid, NULL::text,
                NULL::bigint, NULL::text, NULL::text, NULL::uuid, NULL::bigint,
                NULL::bigint[], same;
            RETURN;
        END IF;
        INSERT INTO attachment_uploads AS u (attachment_id, project_id, sha256, size,
            content_type, file_name, uploaded_by)
        VALUES (p_attachment_id, p_project_id, p_sha256, p_size, p_content_type, p_file_name,
            p_uploaded_by)
        RETURNING * INTO recorded;
    END IF;
    RETURN QUERY SELECT NULL::text, recorded.attachment_id, recorded.project_id,
        recorded.sha256, recorded.size, recorded.content_type, recorded.file_name,
        recorded.uploaded_by, recorded.received, recorded.parts, same;
END;
$$;
