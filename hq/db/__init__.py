"""hq's database layer: the schema (model.py), dialect handling (engine.py), migrations, and
one repository module per table group. Only hq-server and hq-dbadmin import it."""
