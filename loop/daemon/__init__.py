"""Running for days: the daemon, its heartbeat and the checks before a run."""
