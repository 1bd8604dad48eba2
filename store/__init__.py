"""PostgreSQL I/O shell: connections, migrations, the change log and read models."""
