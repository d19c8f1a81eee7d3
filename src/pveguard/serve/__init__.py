"""`pveguard serve`: the daemon (jobs on schedules), the REST API with pveguard's own roles, and
the app the web dashboard mounts into. See docs/serve.md."""
