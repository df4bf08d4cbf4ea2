"""Append-only audit tables: triggers reject UPDATE and TRUNCATE, and DELETE except of events by
the retention job's guarded path (a row in audit_auditpruneguard, inside the job's transaction).

A database superuser can drop or disable triggers; the signed checkpoints are the real control.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

TABLES = (
    "audit_auditevent",
    "audit_auditleaf",
    "audit_auditcheckpoint",
    "audit_auditarchive",
    "audit_auditprune",
)
# Only events may be deleted, and only by the retention job: leaves keep the tree whole.
DELETABLE = ("audit_auditevent",)

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_auditevent'
       AND EXISTS (SELECT 1 FROM audit_auditpruneguard) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit tables are append-only (% on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;
"""


def _install(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    run = schema_editor.execute
    if vendor == "postgresql":
        run(POSTGRES_FUNCTION, None)  # no parameters: its % signs are PL/pgSQL's
        for table in TABLES:
            run(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
            )
            run(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
            )
    elif vendor == "sqlite":
        for table in TABLES:
            run(
                f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'audit tables are append-only'); END"
            )
            guard = (
                "WHEN NOT EXISTS (SELECT 1 FROM audit_auditpruneguard) "
                if table in DELETABLE
                else ""
            )
            run(
                f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} {guard}"
                "BEGIN SELECT RAISE(ABORT, 'audit tables are append-only'); END"
            )


def _remove(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    run = schema_editor.execute
    for table in TABLES:
        if vendor == "postgresql":
            run(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            run(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        elif vendor == "sqlite":
            run(f"DROP TRIGGER IF EXISTS {table}_no_update")
            run(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    if vendor == "postgresql":
        run("DROP FUNCTION IF EXISTS audit_append_only()")


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunPython(_install, _remove)]
