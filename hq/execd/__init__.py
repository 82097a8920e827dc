"""hq-exec-server: one per user and host, runs as that user, runs that user's jobs."""
