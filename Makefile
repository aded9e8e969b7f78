# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv and install the package with what it needs (Debian's
# redis-server too, where the user may). The demo starts a Redis server where none
# answers on 127.0.0.1:6379; the tests start their own on a free port.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: demo test lint bench redis redis-server chromium clean messages

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# Debian's redis-server, installed where it is missing and we may (root with apt).
# The tests start their own server on a free port; the demo uses 127.0.0.1:6379.
redis-server:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "redis: installing Debian's redis-server"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1 || true; \
		else \
			echo "redis: redis-server is not installed (apt-get install redis-server)"; \
		fi; \
	fi

# Debian's chromium for the admin pages' browser tests (Playwright drives it: its own
# browser download cannot be fetched everywhere). Where it cannot be installed, those
# tests are skipped and say what is missing.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "chromium: installing Debian's chromium for the browser tests"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
				|| echo "chromium: could not be installed; the browser tests will be skipped"; \
		else \
			echo "chromium: not installed and not root with apt: the browser tests will be skipped (apt-get install chromium)"; \
		fi; \
	fi

# Start redis-server where none answers on 127.0.0.1:6379. Never fails: the demo then
# falls back to inline delivery.
redis: $(STAMP) redis-server
	@if $(PY) -c "import redis; redis.Redis(socket_connect_timeout=1).ping()" 2>/dev/null; then \
		echo "redis: answering on 127.0.0.1:6379"; \
	elif command -v redis-server >/dev/null 2>&1; then \
		redis-server --daemonize yes --save "" --appendonly no --port 6379 --bind 127.0.0.1 >/dev/null && \
		for i in 1 2 3 4 5 6 7 8 9 10; do \
			$(PY) -c "import redis; redis.Redis(socket_connect_timeout=1).ping()" 2>/dev/null && break; sleep 0.3; \
		done; \
		echo "redis: started redis-server on 127.0.0.1:6379"; \
	fi

# The demo's addresses stop working when it exits; KEEP=1 keeps its servers up until
# Ctrl-C.
demo: redis
	$(PY) -m example_app.demo $(if $(KEEP),--keep)

# One house style, types, and the one-way house (import contracts in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff format --check flask_amocrm tests example_app bench
	$(VENV)/bin/ruff check flask_amocrm tests example_app bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: lint redis-server chromium
	$(PY) -m pytest -q -p no:cacheprovider tests

# The benchmarks' own needs (gunicorn, psutil: the [bench] extra), installed once.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $(BENCH_STAMP)

# bench/fault_soak.py (10,000 events, ~10 min on a busy 2-core machine) is one of
# them; 'python bench/fault_soak.py --events 100000' is the long run.
bench: redis $(BENCH_STAMP)
	@for script in bench/bench_*.py bench/fault_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info build dist

# Update the Russian catalog from the messages in the code and the admin templates;
# then translate the new entries (msgstr "") in the .po file. tests/test_i18n.py fails
# while a message has no translation.
CATALOG := flask_amocrm/translations/ru/LC_MESSAGES/flask_amocrm.po
messages: $(STAMP)
	$(VENV)/bin/pybabel -q extract -F babel.cfg --no-location --sort-output --project Flask-AmoCRM -o .messages.pot .
	@if [ -f $(CATALOG) ]; then \
		$(VENV)/bin/pybabel -q update -i .messages.pot -d flask_amocrm/translations -D flask_amocrm -l ru --no-fuzzy-matching --ignore-obsolete; \
	else \
		$(VENV)/bin/pybabel -q init -i .messages.pot -d flask_amocrm/translations -D flask_amocrm -l ru; \
	fi
	rm -f .messages.pot
