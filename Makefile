PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: run test venv env bench soak clean

# A venv whose requirements are re-installed only when requirements.txt changes.
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
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

# Peers run in venvs of their own (bench/.venv/<peer>), never in requirements.txt; arq pins redis<6.
PEERS := arq saq rq dramatiq celery
bench/.venv/%/.installed: bench/requirements/%.txt
	test -x bench/.venv/$*/bin/python || $(PYTHON) -m venv bench/.venv/$*
	bench/.venv/$*/bin/pip install --quiet --disable-pip-version-check -r $< && touch $@ \
		|| echo "bench: could not install $*; it will be reported as not run"

bench: venv $(PEERS:%=bench/.venv/%/.installed)
	$(PY) bench/run.py

# Workers SIGKILLed at random while they run jobs, on SQLite, MySQL and Redis: nothing may be lost.
# The chaos test, longer: SOAK_JOBS, SOAK_SECONDS, SOAK_WORKERS, ... (README, "Chaos").
soak: venv
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) storage/*.sqlite* storage/logs/*.log
