PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: run test lint venv env bench bench-mqtt bench-events soak clean

# A venv with the runtime and the test/lint requirements (requirements-dev.txt includes
# requirements.txt), re-installed only when either file changes.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# .env from .env.example on first run, with a random APP_KEY for payload signing.
env:
	@test -f .env || cp .env.example .env
	@grep -q '^APP_KEY=.\+' .env || $(PY) -c "import secrets,re,pathlib; p=pathlib.Path('.env'); t=p.read_text(); k='base64:'+__import__('base64').b64encode(secrets.token_bytes(32)).decode(); p.write_text(re.sub(r'(?m)^APP_KEY=.*$$', 'APP_KEY='+k, t) if re.search(r'(?m)^APP_KEY=', t) else t+'\nAPP_KEY='+k+'\n')"

run: venv env
	$(PY) main.py demo

test: venv
	$(PY) -m pytest -q

# ruff (pycodestyle, pyflakes, bugbear at 120 columns) and mypy, as configured in pyproject.toml.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

# Peers run in venvs of their own (bench/.venv/<peer>), never in requirements.txt: arq pins redis<6,
# taskiq-redis needs redis>=6, RouteMQ needs Python 3.12 or newer. Each venv is built once (the
# .installed stamp), again only when its requirements file changes; pip's output goes to
# bench/.venv/<peer>.log. A peer that cannot install is reported by the run as not run, with the reason.
PEERS := arq saq rq dramatiq celery taskiq routemq asyncmq chancy procrastinate dbjobq
ROUTEMQ_PYTHON ?= $(shell for p in $(HOME)/.pyenv/versions/3.1[2-9]*/bin/python python3.13 python3.12 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { command -v $$p; break; }; done)
peer_python = $(if $(filter routemq,$(1)),$(ROUTEMQ_PYTHON),$(PYTHON))

bench/.venv/%/.installed: bench/requirements/%.txt
	@mkdir -p bench/.venv
	@echo "bench: installing $* into bench/.venv/$* (once)"
	@( test -n "$(call peer_python,$*)" || { echo "no Python 3.12 or newer found: set ROUTEMQ_PYTHON"; exit 1; } ; \
	  test -x bench/.venv/$*/bin/python || $(call peer_python,$*) -m venv bench/.venv/$* || exit 1 ; \
	  bench/.venv/$*/bin/pip install --disable-pip-version-check -r $< ) > bench/.venv/$*.log 2>&1 \
		&& touch $@ || echo "bench: could not install $* (bench/.venv/$*.log); it will be reported as not run"

# BENCH_N=2000 make bench for a quick run; BENCH_ONLY=ours,taskiq runs only the targets named.
bench: venv $(PEERS:%=bench/.venv/%/.installed)
	$(PY) bench/run.py

# MQTT ingest (SPEC 18): messages/s from a private mosquitto through a route to a stored job: ours at
# QoS 0 and 1, RouteMQ, and a bare aiomqtt subscriber as the limit. BENCH_MQTT_N, BENCH_MQTT_ROUNDS.
bench-mqtt: venv bench/.venv/routemq/.installed
	$(PY) bench/mqtt_ingest.py

# What SPEC 10's events cost a worker: emit calls compiled out, shipped with no listener, one listener.
bench-events: venv
	$(PY) bench/events.py

# Workers SIGKILLed at random while they run jobs, on SQLite, MySQL and Redis: nothing may be lost.
# The chaos test, longer: SOAK_JOBS, SOAK_SECONDS, SOAK_WORKERS, ... (docs/RELIABILITY.md).
soak: venv
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) storage/*.sqlite* storage/logs/*.log
