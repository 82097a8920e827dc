"""hq-user-server: one per user, runs as that user, relays requests and drives exec-servers."""
