"""What each stack key means, in one sentence: the reference (docs: Stack keys) is generated from these beside
the schema's types, defaults and bounds, and a test fails when a key of the schema has no meaning here."""

from __future__ import annotations

MEANING: dict[str, str] = {
    "name": "supervisord's identifier for the stack",
    "paths.root": "the deploy worktree and working directory; must exist unless `paths.create_root`",
    "paths.venv": "PROTEA's venv; its binaries are run directly, never through `poetry run`",
    "paths.logs": "one `<process name>.log` per process (promtail labels services by file name)",
    "paths.run": (
        "socket (mode 0700), pidfile, rendered config, supervisord.log, overrides and every record; keep it "
        "outside the worktree, so that it survives a recreated worktree"
    ),
    "paths.create_root": "create `paths.root` when it does not exist (the demo does)",
    "env.files": "dotenv files, later ones win; missing ones are skipped; never readable by group or others",
    "env.required": "variables that must be set before anything starts",
    "env.require_jwt_secret": "also require `PROTEA_JWT_SECRET`, unless `PROTEA_AUTHN_REQUIRED` is off",
    "control.inet_port": (
        "an inet control server (0: off); it needs `control.username` and `control.password_sha` and binds "
        "`control.inet_host`, a loopback address"
    ),
    "control.inet_host": "the address the inet control server binds (loopback only)",
    "control.username": "the inet control server's user",
    "control.password_sha": "`{SHA}` and the 40-hex SHA-1 of the inet control server's password",
    "control.fast_reactions": (
        "load the `[rpcinterface:protea]` waker, so supervisord reacts to a child's exit in milliseconds "
        "instead of about a second"
    ),
    "control.operation_wait": "seconds a command that changes the stack waits for another one to finish",
    "control.log_retention_days": "days after which the logs of processes no longer in the stack are deleted",
    "programs.*.command": "the program's command (roles: migrate, api, web, tunnel)",
    "programs.*.directory": "its working directory",
    "programs.*.environment": "a table of non-secret values; names that look like secrets are refused",
    "programs.*.stop_signal": "the signal that stops it",
    "programs.*.stop_grace": "seconds it has to stop before it is killed",
    "programs.*.startsecs": "seconds it must stay up to count as started",
    "programs.*.enabled": "false leaves the program out (a compute node turns every program off)",
    "programs.*.requires_file": "a file (relative to the directory) without which `fallback_command` runs",
    "programs.*.fallback_command": "run instead of `command` while `requires_file` is missing",
    "programs.*.socket": (
        "api only: `tcp://HOST:PORT`, a socket supervisord holds, so that a restart's requests wait in the "
        "backlog and a deploy replaces the API start-first"
    ),
    "workers.command": "every queue worker's command (`{queue}` is its queue), unless its queue sets one",
    "workers.stop_signal": "the signal that stops a worker",
    "workers.stop_grace": (
        "seconds a worker has to finish its job before it is killed; it must cover the longest job"
    ),
    "workers.startsecs": "seconds a worker must stay up to count as started",
    "workers.directory": "the workers' working directory",
    "workers.restart_delay": (
        "seconds after which the extension starts again a worker that exited or went FATAL, for ever "
        "(0: supervisord's own restarts)"
    ),
    "queues.*.program": "the worker program's name",
    "queues.*.processes": "worker processes (0 leaves the queue out)",
    "queues.*.numbered": "name the processes `<program>-1..N`, so that the queue can run several",
    "queues.*.stop_grace": "the queue's own stop grace",
    "queues.*.command": "the queue's own worker command",
    "queues.*.starved_after": (
        "seconds a queue with messages and consumers may go without an ack before `queues` calls it starved"
    ),
    "queues.*.singleton": "at most one consumer on any host (a Postgres advisory lock taken at start)",
    "queues.*.autoscale.min": "autoscaling (opt in with the table): this host's fewest workers for the queue",
    "queues.*.autoscale.max": "this host's most workers for the queue",
    "queues.*.autoscale.target_backlog": (
        "messages (ready and unacknowledged) per process the count aims at, counting the processes RUNNING "
        "on other hosts whose heartbeat is fresh"
    ),
    "queues.*.autoscale.scale_up_delay": "seconds a larger count must be wanted before it is taken",
    "queues.*.autoscale.scale_down_window": (
        "seconds over which scale-down takes the highest count wanted (a dip in a burst never scales down)"
    ),
    "queues.*.autoscale.cooldown": "seconds between two changes of the count",
    "probes.api_ready_url": "the gate waits for this URL to answer 2xx after the API starts (empty: no wait)",
    "probes.api_ready_timeout": "seconds the gate and a deploy wait for the API to be ready",
    "probes.web_url": "the gate waits for this URL to answer 2xx after web starts (empty: no wait)",
    "probes.web_timeout": "seconds the gate waits for web to be ready",
    "probes.public_url": "the public page the tunnel watchdog probes",
    "probes.ngrok_api_url": "ngrok's local API, which the tunnel watchdog reads",
    "probes.infra_from_env": (
        "variables holding URLs whose TCP ports (Postgres, RabbitMQ) must accept connections before anything "
        "starts"
    ),
    "probes.infra_timeout": "seconds the gate waits for those ports",
    "probes.start_timeout": "seconds started workers and the tunnel have to reach RUNNING",
    "deploy.repository": "the clone the deploy worktree belongs to",
    "deploy.remote": "the git remote a tick fetches",
    "deploy.ref": "the branch a tick follows",
    "deploy.poll_interval": "seconds between the deploy timer's ticks",
    "deploy.jitter": "up to this many seconds added to each interval",
    "deploy.retry_ladder": "seconds before each retry after a failed tick",
    "deploy.pause_after_escalation": "seconds the timer pauses after the escalation command ran",
    "deploy.escalation_command": "run with bash after the ladder is spent (`FAIL_KIND`, `FAIL_EXIT` set)",
    "deploy.lock_files": "files whose change makes a tick run the install command",
    "deploy.install_command": "run with bash when a lock file changed",
    "deploy.post_install_command": "run with bash after the install (PROTEA's CUDA torch reinstall)",
    "deploy.web_dir": "the frontend's directory inside the worktree",
    "deploy.build_command": "run with bash in a fresh export of the frontend when it changed",
    "deploy.web_current": "the symlink to the served build (point web's `directory` at it)",
    "deploy.enabled": "run the deploy-timer listener",
    "deploy.check_interval": "seconds between `git ls-remote` checks for a new commit (0: off)",
    "deploy.prerequisite_timeout": "seconds a tick waits for the `probes.infra_from_env` ports",
    "deploy.api_canary_command": (
        "the new revision's API on a port of its own, proved ready before the serving API moves (with "
        "`api_canary_url`; empty: no canary)"
    ),
    "deploy.api_canary_url": "the canary's readiness URL; not `probes.api_ready_url`'s address",
    "host.role": "`server` (everything) or `node` (workers only, following the server's declared revision)",
    "host.name": "the host's name in heartbeats and `status --all-hosts`",
    "host.declare_revision": "the server's tick records each deployed revision in Postgres",
    "host.revision_guard": "each worker start passes the revision guard",
    "host.db_url_env": "the env-file variable naming the server's Postgres",
    "host.amqp_url_env": "the env-file variable naming RabbitMQ: a singleton worker starts once the broker "
    "counts no other consumer of its queue",
    "host.migrations_dir": "where a node finds the migrations a revision needs",
    "host.heartbeat": "run the heartbeat listener (a row per host in the server's Postgres)",
    "host.stale_after": "seconds after which a host's heartbeat is stale",
    "lock.file": "the stack-owner lock file (file-compatible with stack_owner.sh)",
    "lock.flock_timeout": "seconds to wait for the flock guarding the lock file",
    "metrics.enabled": "run the metrics listener",
    "metrics.host": "the address it serves Prometheus exposition on",
    "metrics.port": "its port",
    "monitor.rabbit_api": "the RabbitMQ management API that `queues` reads",
    "monitor.queue_prefix": "the queues it judges",
    "monitor.exempt": "queues it never flags",
    "monitor.starved_after": "seconds a busy queue may go without an ack before it is starved",
    "notify.slack_url_env": "variables holding Slack-compatible webhook URLs",
    "notify.json_url_env": "variables holding JSON webhook URLs",
    "notify.events": "the deploy events sent",
    "notify.timeout": "seconds one webhook call may take",
    "notify.retries": "attempts after the first",
    "backup.dir": "where dumps go (a 0700 folder)",
    "backup.keep": "dumps kept",
    "backup.min_free_gb": "GB that must be free in `backup.dir` before a backup",
    "backup.database_url_env": "the env-file variable naming the database",
    "backup.extensions": "extensions created before a restore (PROTEA's halfvec columns need pgvector)",
    "backup.check_tables": "tables a restore requires present and not empty",
    "backup.min_tables": "public tables a restore must hold at least",
    "backup.jobs": "`pg_restore --jobs`",
    "tunnel_watch.enabled": "run the tunnel watchdog",
    "tunnel_watch.probe_interval": "seconds between probes, on the watchdog's own clock",
    "tunnel_watch.probe_timeout": "seconds one probe may take",
    "tunnel_watch.failures": "consecutive failed probes that restart the tunnel",
    "tunnel_watch.confirm_interval": "seconds between the probes that confirm a failure",
    "tunnel_watch.grace": "seconds after a start in which failed probes do not count",
    "tunnel_watch.backoff_initial": "the first pause between restarts, doubling",
    "tunnel_watch.backoff_max": "the longest pause between restarts",
    "tunnel_watch.max_restarts_per_hour": "restarts the watchdog makes in an hour before it gives up",
    "tunnel_watch.down_statuses": (
        "HTTP statuses that count as down, besides no answer, a timeout, any 5xx and an ngrok error header "
        "(402: an expired ngrok session)"
    ),
}
