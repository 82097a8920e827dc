"""The host monitor: facts about hosts (CPU, load, memory, reachability) measured as
hq-server's own account, never taken from a user (DESIGN §3)."""
