"""The commands as a user types them: `python main.py ...`."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from bootstrap.app import create_app
from tests.conftest import ROOT, run_cli
from tests.jobs.sample_jobs import FlakyJob, RecordingJob, read_events

COMMANDS = ["queue:work", "queue:failed", "queue:retry", "queue:forget", "queue:flush", "queue:prune-failed",
            "queue:clear", "queue:size", "queue:restart", "migrate", "make:job"]


def dispatch(coro_factory):
    async def go():
        async with create_app():
            return await coro_factory()
    return asyncio.run(go())


def test_help_lists_every_command_and_each_explains_itself():
    result = run_cli("--help", check=True)
    for name in COMMANDS:
        assert name in result.stdout
    for name in COMMANDS:
        sub = run_cli(name, "--help", check=True)
        assert "Usage: python main.py " + name in sub.stdout and len(sub.stdout.splitlines()) > 4


def test_failed_jobs_can_be_listed_retried_and_keep_their_id(tmp_path):
    log = str(tmp_path / "events")
    job_id = dispatch(lambda: FlakyJob.dispatch(log=log, succeed_on=99))
    work = run_cli("queue:work", "--stop-when-empty", "--sleep", "0.05", check=True)
    assert f"FAIL    FlakyJob [{job_id}]" in work.stdout

    table = run_cli("queue:failed", check=True).stdout
    assert job_id in table and "tests.jobs.sample_jobs.FlakyJob" in table and "ValueError: flaky attempt 3" in table
    [row] = json.loads(run_cli("queue:failed", "--json", check=True).stdout)
    assert set(row) == {"id", "connection", "queue", "job", "exception", "failed_at"}
    assert (row["id"], row["connection"], row["queue"], row["job"], row["exception"]) == (
        job_id, "database", "default", "tests.jobs.sample_jobs.FlakyJob", "ValueError: flaky attempt 3")
    assert row["failed_at"].endswith("Z") and row["failed_at"][:4].isdigit()

    retried = run_cli("queue:retry", job_id, check=True)
    assert job_id in retried.stdout
    assert json.loads(run_cli("queue:failed", "--json", check=True).stdout) == []
    size = json.loads(run_cli("queue:size", "--json", check=True).stdout)
    assert size == {"connection": "database",
                    "queues": {"default": {"pending": 1, "delayed": 0, "reserved": 0, "waiting": 0}}}

    # attempts were reset: three more tries, under the same id, then failed again
    run_cli("queue:work", "--stop-when-empty", "--sleep", "0.05", check=True)
    handles = [e for e in read_events(log) if e["event"] == "handle"]
    assert [e["attempts"] for e in handles] == [1, 2, 3, 1, 2, 3]
    assert {e["job_id"] for e in handles} == {job_id}
    assert json.loads(run_cli("queue:failed", "--json", check=True).stdout)[0]["id"] == job_id


def test_retry_all_forget_flush_and_prune(tmp_path):
    log = str(tmp_path / "events")
    ids = [dispatch(lambda: FlakyJob.dispatch(log=log, succeed_on=99)) for _ in range(3)]
    run_cli("queue:work", "--stop-when-empty", "--sleep", "0.05", "--tries", "1", check=True)
    assert len(json.loads(run_cli("queue:failed", "--json").stdout)) == 3

    missing = run_cli("queue:forget", "no-such-id")
    assert missing.returncode == 1 and "No failed job with id no-such-id" in missing.stderr
    assert run_cli("queue:forget", ids[0], check=True).returncode == 0
    assert run_cli("queue:prune-failed", "--hours", "1", check=True).stdout.startswith("Pruned 0")
    assert run_cli("queue:retry", "all", check=True).stdout.count("Retried") == 2
    run_cli("queue:work", "--stop-when-empty", "--sleep", "0.05", "--tries", "1", check=True)
    # Negative hours would reach into the future: every failed job. Refused, nothing deleted.
    for command in ("queue:flush", "queue:prune-failed"):
        refused = run_cli(command, "--hours", "-1")
        assert refused.returncode == 2 and "Invalid value for '--hours'" in refused.stderr
    assert len(json.loads(run_cli("queue:failed", "--json").stdout)) == 2
    assert "Deleted 2 failed job(s)" in run_cli("queue:flush", check=True).stdout
    assert run_cli("queue:failed", check=True).stdout.strip() == "No failed jobs."


def test_size_and_clear(tmp_path):
    log = str(tmp_path / "events")

    async def push():
        for n in range(3):
            await RecordingJob.dispatch(log=log, value=n).on_queue("emails")
        await RecordingJob.dispatch(log=log, value="later").on_queue("emails").delay(60)
        await RecordingJob.dispatch(log=log, value="other").on_queue("reports")

    dispatch(push)
    sizes = json.loads(run_cli("queue:size", "--json", check=True).stdout)
    assert sizes["queues"] == {"emails": {"pending": 3, "delayed": 1, "reserved": 0, "waiting": 0},
                               "reports": {"pending": 1, "delayed": 0, "reserved": 0, "waiting": 0}}
    table = run_cli("queue:size", "--queue", "emails", check=True).stdout
    assert "emails" in table and "reports" not in table
    assert "Cleared 4 job(s) from queue emails" in run_cli("queue:clear", "--queue", "emails", check=True).stdout
    sizes = json.loads(run_cli("queue:size", "--json", "--queue", "emails,reports", check=True).stdout)
    assert sizes["queues"]["emails"]["pending"] == 0 and sizes["queues"]["reports"]["pending"] == 1


def start_worker(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "main.py", "queue:work", *args], cwd=ROOT, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc


def test_queue_restart_stops_running_workers(tmp_path):
    proc = start_worker("--sleep", "0.1")
    try:
        time.sleep(1.5)
        assert proc.poll() is None
        assert "Restart signal sent" in run_cli("queue:restart", check=True).stdout
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "queue:restart" in out


def test_worker_log_lines_name_class_id_status_and_duration(tmp_path):
    log = str(tmp_path / "events")
    job_id = dispatch(lambda: RecordingJob.dispatch(log=log, value=1))
    out = run_cli("queue:work", "--stop-when-empty", check=True).stdout
    running = next(line for line in out.splitlines() if "RUNNING" in line)
    done = next(line for line in out.splitlines() if "DONE" in line)
    assert f"RecordingJob [{job_id}]" in running and f"RecordingJob [{job_id}]" in done
    assert done[:4].isdigit() and done.rstrip().endswith("ms")


def test_log_file_receives_the_job_lines(tmp_path, monkeypatch):
    name = f"test-{os.getpid()}-{time.time_ns()}.log"
    monkeypatch.setenv("LOG_FILE", name)
    path = ROOT / "storage" / "logs" / name
    try:
        job_id = dispatch(lambda: RecordingJob.dispatch(log=str(tmp_path / "e"), value=1))
        run_cli("queue:work", "--stop-when-empty", check=True)
        assert f"DONE    RecordingJob [{job_id}]" in path.read_text()
    finally:
        path.unlink(missing_ok=True)


def test_timeout_not_below_visibility_timeout_is_refused():
    result = run_cli("queue:work", "--timeout", "90")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "--timeout 90 is too close to QUEUE_VISIBILITY_TIMEOUT (90s): at most 86.95s, or a job blocking the event "
        "loop that long lets another running job's reservation lapse and a second worker run it"]


@pytest.mark.parametrize("option, value, message", [
    ("--max-jobs", "-1", "--max-jobs -1 must be 0 (no limit) or more"),          # hung: no job was ever taken
    ("--max-time", "-1", "--max-time -1 must be a number of seconds, 0 (no limit) or more"),
    ("--sleep", "-1", "--sleep -1 must be a number of seconds of 0 or more"),      # busy-polled the store
    ("--sleep", "nan", "--sleep nan must be a number of seconds of 0 or more"),
    ("--memory", "-5", "--memory -5 must be 0 (no limit) or more MB"),
])
def test_worker_options_out_of_range_are_one_clear_line(option, value, message):
    result = run_cli("queue:work", option, value, "--stop-when-empty", timeout=30)
    assert result.returncode == 1 and result.stderr.strip() == message, result.stderr


@pytest.mark.parametrize("name", ["MQTT_TLS", "MQTT_CLEAN_SESSION", "DB_WAKE", "REDIS_CLUSTER"])
def test_a_yes_no_setting_with_a_typo_is_refused_not_read_as_false(name):
    """MQTT_TLS=ture used to connect in plain text without a word; every yes/no setting refuses it."""
    result = run_cli("queue:size", env={name: "ture"})
    assert result.returncode == 1
    assert result.stderr.strip() == f"{name} must be true or false (1/0, yes/no, on/off), got 'ture'"
    assert run_cli("queue:size", env={name: "off"}).returncode == 0


@pytest.mark.parametrize("env, message", [
    ({"DB_LISTEN_URL": "garbage"}, "DB_LISTEN_URL must be a postgresql:// URL (postgresql://user:password@host:5432/"
                                   "database), got no scheme"),
    ({"DB_LISTEN_URL": "postgresql://u:secret@h:notaport/db"},
     "DB_LISTEN_URL has a port that is not a number from 1 to 65535"),
    ({"DB_TIMEOUT": "-5"}, "DB_TIMEOUT must be a number of seconds, 0 (no limit) or more, got -5"),
])
def test_a_malformed_database_setting_is_one_line_at_start(env, message):
    """A bad DB_LISTEN_URL was found only by the wake-up listener, which retried it for good (and
    --stop-when-empty exited 0); DB_TIMEOUT=-5 meant no limit. Neither repeats a password."""
    result = run_cli("queue:size", env=env)
    assert result.returncode == 1 and result.stderr.strip() == message
    assert "secret" not in result.stderr


@pytest.mark.parametrize("env, message", [
    ({"JOB_PACKAGES": ",,"},
     "JOB_PACKAGES must name Python packages, comma-separated (app.jobs,billing.jobs), got ',,'"),
    ({"LOG_FILE": "/tmp/app.log"}, "LOG_FILE must be a file name under storage/logs/ (worker.log, or "
                                   "workers/emails.log), got '/tmp/app.log'"),
    ({"LOG_FILE": "../../escape.log"}, "LOG_FILE must be a file name under storage/logs/ (worker.log, or "
                                       "workers/emails.log), got '../../escape.log'"),
    ({"MQTT_MAX_CONCURRENT": "0"}, "MQTT_MAX_CONCURRENT must be at least 1 (messages handled at once), got 0"),
    ({"REDIS_URL": "http://user:secret@cache:6379/0"},     # was redis-py's ValueError, naming no setting
     "REDIS_URL must start with redis://, rediss://, unix://, redis+cluster://, rediss+cluster://, got one with "
     "the scheme 'http'"),
    ({"MQTT_CONNECT_TIMEOUT": "-1"}, "MQTT_CONNECT_TIMEOUT must be a number of seconds, 0 (retry for good) or "
                                     "more, got -1"),
])
def test_an_app_setting_out_of_its_range_is_one_line_at_start(env, message):
    """JOB_PACKAGES=',,' was taken and every job then failed as outside the job packages; LOG_FILE wrote
    wherever it pointed (SPEC 3: under storage/logs/); the MQTT numbers were taken as given."""
    result = run_cli("queue:size", env=env)
    assert result.returncode == 1 and result.stderr.strip() == message
    assert not (ROOT.parent / "escape.log").exists() and "secret" not in result.stderr


def test_a_database_host_that_does_not_resolve_is_named_as_such(pgsql_env, monkeypatch):
    """PostgreSQL said 'Unknown error -2' (os.strerror of the resolver's code), MySQL the resolver's words."""
    result = run_cli("queue:size", env={"DB_HOST": "nonexistent.invalid"})
    assert result.returncode == 1
    assert result.stderr.strip() == \
        "Cannot connect to PostgreSQL at nonexistent.invalid:5432: Name or service not known"


def test_bad_queue_name_is_one_clear_line():
    result = run_cli("queue:work", "--queue", "bad name;drop")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("invalid queue name 'bad name;drop'")


@pytest.mark.parametrize("driver, label", [("mysql", "MySQL"), ("pgsql", "PostgreSQL")])
@pytest.mark.parametrize("command", [["queue:size"], ["queue:failed"], ["queue:work", "--once"], ["migrate"]])
def test_an_unreachable_database_server_is_one_line_without_the_password(command, driver, label):
    env = {"DB_CONNECTION": driver, "DB_PORT": "1", "DB_PASSWORD": "hunter2-secret", "DB_DATABASE": "x"}
    result = run_cli(*command, env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == f"Cannot connect to {label} at 127.0.0.1:1: Connection refused"
    assert "hunter2-secret" not in result.stdout + result.stderr


def test_pgsql_takes_port_5432_by_default_and_a_missing_database_is_one_line(pgsql_env, monkeypatch):
    monkeypatch.delenv("DB_PORT")
    result = run_cli("queue:size", "--json", env={"DB_DATABASE": "no_such_database_here"})
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("Cannot connect to PostgreSQL at 127.0.0.1:5432: ")
    assert "no_such_database_here" in result.stderr


def test_migrate_creates_the_tables_on_pgsql(pgsql_env):
    from tests.servers import pgsql_query

    run_cli("migrate", check=True)
    tables = {name for (name,) in pgsql_query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                                              database=pgsql_env)}
    assert {"jobs", "failed_jobs", "finished_jobs", "job_locks"} <= tables
    run_cli("migrate", check=True)          # again: nothing to do, no error


def test_workers_starting_together_on_a_fresh_pgsql_database_all_migrate_it(pgsql_env):
    """Two CREATE TABLE IF NOT EXISTS at once on PostgreSQL can both pass the check, the second then
    failing on a duplicate type: that failure means the table is there, as for an index or a column."""
    processes = [subprocess.Popen([sys.executable, "main.py", "migrate"], cwd=ROOT, env=dict(os.environ),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, outputs


def test_wrong_mysql_credentials_are_one_line_without_the_password(mysql_env):
    env = {"DB_USERNAME": "no_such_user", "DB_PASSWORD": "hunter2-secret"}
    result = run_cli("queue:size", env=env)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "Access denied for user 'no_such_user'" in result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr


def test_migrate_creates_the_tables(tmp_path):
    import sqlite3

    assert "Migrated jobs and failed_jobs" in run_cli("migrate", check=True).stdout
    db = sqlite3.connect(os.environ["DB_DATABASE"])
    columns = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in ("jobs", "failed_jobs")}
    assert columns == {"jobs": ["id", "queue", "payload", "attempts", "reserved_at", "available_at", "created_at",
                                "uuid", "state", "claim", "failing", "failed_ran", "releases", "due_at",
                                "priority_rank", "last_error", "progress", "cancelled"],
                       "failed_jobs": ["id", "uuid", "connection", "queue", "payload", "exception", "failed_at",
                                       "attempts"]}
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"job_locks", "job_limits", "job_limit_hits", "job_throttles"} <= tables      # SPEC 9 middleware state


def test_migrate_adds_attempts_to_a_failed_jobs_table_of_an_earlier_release():
    """Laravel's failed_jobs as an earlier release made it, with a row: migrate adds the attempts
    column (SPEC 11's status of a failed job); the old row stays listed and reads 0."""
    import sqlite3

    db = sqlite3.connect(os.environ["DB_DATABASE"])
    db.execute("CREATE TABLE failed_jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, uuid VARCHAR(255) NOT NULL, "
               "connection TEXT NOT NULL, queue TEXT NOT NULL, payload TEXT NOT NULL, exception TEXT NOT NULL, "
               "failed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
               "CONSTRAINT failed_jobs_uuid_unique UNIQUE (uuid))")
    db.execute("INSERT INTO failed_jobs (uuid, connection, queue, payload, exception) "
               "VALUES ('old-1', 'database', 'default', '{\"job\": \"app.jobs.x.X\"}', 'ValueError: old')")
    db.commit()
    run_cli("migrate", check=True)
    assert [r[1] for r in db.execute("PRAGMA table_info(failed_jobs)")][-1] == "attempts"
    listed = json.loads(run_cli("queue:failed", "--json", check=True).stdout)
    assert [(row["id"], row["exception"]) for row in listed] == [("old-1", "ValueError: old")]
    shown = json.loads(run_cli("queue:status", "old-1", "--json", check=True).stdout)
    assert (shown["state"], shown["attempts"]) == ("failed", 0)


def test_make_job_writes_a_working_job_class(tmp_path):
    # In a copy of the project: a job file written into this checkout's app/jobs/ would be found by
    # every worker that other tests start meanwhile.
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".*", "__pycache__", "bench", "docs", "tests",
                                                                 "storage"))
    result = subprocess.run([sys.executable, "main.py", "make:job", "TmpTestJob", "--queue", "sms"], cwd=project,
                            capture_output=True, text=True)
    assert "Created app/jobs/tmp_test_job.py" in result.stdout, result.stdout + result.stderr
    again = subprocess.run([sys.executable, "main.py", "make:job", "TmpTestJob"], cwd=project, capture_output=True,
                           text=True)
    assert again.returncode == 1 and "already exists" in again.stderr
    check = subprocess.run([sys.executable, "-c", "from app.jobs.tmp_test_job import TmpTestJob; "
                            "print(TmpTestJob.queue, TmpTestJob.max_tries)"],
                           cwd=project, capture_output=True, text=True)
    assert check.stdout.strip() == "sms 3", check.stderr
    # Laravel takes the name as given; a snake_case or camelCase name means its CamelCase class.
    for given in ("read_meter_job", "readMeterJob"):
        made = subprocess.run([sys.executable, "main.py", "make:job", given, "--force"], cwd=project,
                              capture_output=True, text=True)
        assert "Created app/jobs/read_meter_job.py: dispatch it with `await ReadMeterJob.dispatch" in made.stdout, \
            made.stdout + made.stderr
    check = subprocess.run([sys.executable, "-c", "from app.jobs.read_meter_job import ReadMeterJob"], cwd=project,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    for bad in ("send-email", "9lives", "None", "class", "import"):
        refused = run_cli("make:job", bad)
        assert refused.returncode == 1 and "must be a class name" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (ROOT / "app" / "jobs" / "tmp_test_job.py").exists()


def test_an_env_file_line_that_cannot_be_read_is_one_line_naming_it_not_skipped(tmp_path):
    """python-dotenv warns and skips such a line, so DB_CONNECTION="pgsql (an unclosed quote) ran on
    SQLite. Now: one line naming the line and the setting, never its value, and exit 1."""
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".*", "__pycache__", "bench", "docs", "tests",
                                                                 "storage"))
    (project / ".env").write_text('APP_NAME=demo\nDB_PASSWORD="s3cret\nDB_CONNECTION=sqlite\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "APP_"))}
    result = subprocess.run([sys.executable, "main.py", "queue:size"], cwd=project, capture_output=True, text=True,
                            env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == ".env line 2: the setting 'DB_PASSWORD' cannot be read (an unclosed quote?)"
    assert "s3cret" not in result.stdout + result.stderr


def test_demo_runs_the_examples_and_ends_with_the_failing_one_in_failed_jobs():
    result = run_cli("demo", check=True, timeout=90)
    for name in ("SendEmailJob", "SendNotificationJob", "ProcessDataJob", "GenerateReportJob"):
        assert f"DONE    {name}" in result.stdout
    assert result.stdout.count("RETRY   AlwaysFailingJob") == 2 and "FAIL    AlwaysFailingJob" in result.stdout
    assert "is in failed_jobs" in result.stdout and "RuntimeError: the upstream service is down" in result.stdout


def test_a_job_that_cannot_be_interrupted_ends_the_worker_and_is_not_run_again(tmp_path, monkeypatch):
    """The watchdog's last resort: exit so the job's reservation lapses; the next worker fails it."""
    from tests.jobs.sample_jobs import UninterruptibleJob

    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "3")
    log = str(tmp_path / "events")
    job_id = dispatch(lambda: UninterruptibleJob.dispatch(log=log, seconds=60))
    started = time.monotonic()
    first = run_cli("queue:work", "--stop-when-empty", timeout=60)
    assert first.returncode == 70, first.stdout + first.stderr
    assert time.monotonic() - started < 30
    assert "could not be interrupted" in first.stdout
    time.sleep(4)                                        # the dead worker's reservation lapses
    second = run_cli("queue:work", "--stop-when-empty", check=True)
    assert f"FAIL    UninterruptibleJob [{job_id}]" in second.stdout
    assert [e["event"] for e in read_events(log)] == ["start", "failed"]   # not run past its one try; failed() once
    [row] = json.loads(run_cli("queue:failed", "--json", check=True).stdout)
    assert row["id"] == job_id and row["exception"].startswith("core.worker.MaxAttemptsExceededError")


def test_output_piped_into_a_reader_that_went_away_ends_quietly():
    """`python main.py route:list | head -0`: the write finds the pipe closed. Quiet, like a shell tool
    ended by SIGPIPE (status 141), not a BrokenPipeError line with exit 1."""
    read_end, write_end = os.pipe()
    os.close(read_end)                          # the reader is gone before the first write
    try:
        result = subprocess.run([sys.executable, "main.py", "route:list"], cwd=ROOT, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 141 and result.stderr == ""


def test_a_job_package_that_cannot_be_imported_is_named_when_the_worker_starts():
    """JOB_PACKAGES with a typo was taken without a word; every job of the intended package then failed
    as 'outside the job packages'. The worker says so as it starts (and still runs)."""
    result = run_cli("queue:work", "--stop-when-empty", env={"JOB_PACKAGES": "app.jobs,app.jbos"})
    assert result.returncode == 0, result.stderr
    assert "JOB_PACKAGES names app.jbos, which cannot be imported" in result.stdout + result.stderr
