-- A change belongs to exactly one entity: its hash is unique within a project. The append
-- path refuses a change logged under another entity (reject code foreign_change); this
-- constraint is the backstop. It replaces UNIQUE (project_id, hash, entity_id), which let
-- one change be logged under several entities.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM changes GROUP BY project_id, hash HAVING count(*) > 1) THEN
        RAISE EXCEPTION 'changes holds a change hash logged under several entities of one project'
            USING HINT = 'find them with: SELECT project_id, hash, array_agg(entity_id) FROM '
                         'changes GROUP BY 1, 2 HAVING count(*) > 1; see docs/storage.md';
    END IF;
END
$$;

ALTER TABLE changes ADD CONSTRAINT changes_project_hash_key UNIQUE (project_id, hash);
ALTER TABLE changes DROP CONSTRAINT changes_project_id_hash_entity_id_key;
