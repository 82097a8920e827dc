"""hq-server: the scheduler and the only writer of the database."""
