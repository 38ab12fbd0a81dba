# TaskHub: `make run` to try it, `make test` for the whole suite, `make bench` for the benchmarks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The test suite runs against PostgreSQL and Redis (override to point elsewhere).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15
# The worker and recovery tests run a second time with RabbitMQ as the broker.
TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/taskhub_test
# The RabbitMQ pass: the recovery checks, the hand-retry rule, RabbitMQ's own
# tests, and the worker tests where the broker matters (retries, duplicate
# delivery, cancel, beat), so that the whole of make test stays well under 15 min.
AMQP_TESTS := tests/test_rabbitmq.py tests/test_recovery_checks.py tests/test_hand_retry.py \
	tests/test_worker.py::test_a_failing_command_with_two_retries_yields_three_failed_attempts_of_one_run \
	tests/test_worker.py::test_the_same_run_message_delivered_twice_runs_the_command_once \
	tests/test_worker.py::test_cancelling_a_running_execution_stops_it_within_two_seconds_plus_grace \
	tests/test_worker.py::test_a_beat_schedule_fires_and_its_executions_carry_trigger_schedule

# The main pass runs in this many processes: most tests wait on real workers and
# commands, so two processes on two cores take little more than half the time.
TEST_PROCESSES ?= 2

.PHONY: run install test-tools test lint bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "TaskHub needs Python 3.10 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# taskhub_setup makes var/ (secret key, SQLite file, broker folders) before it migrates.
run: install
	$(PY) manage.py taskhub_setup --url http://$${TASKHUB_BIND:-127.0.0.1:8000}/admin/
	$(PY) manage.py collectstatic --noinput --verbosity 0
	@echo "Starting web, worker and beat (Ctrl-C stops all of them)…"
	$(VENV)/bin/honcho start

# The browser tests drive Debian's Chromium (Playwright's own browser builds are not downloaded);
# the isolated-task tests run commands under Debian's bubblewrap.
test-tools:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v bwrap >/dev/null 2>&1 || missing="$$missing bubblewrap"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install test-tools lint
	$(PY) manage.py makemigrations --check --dry-run --skip-checks
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
		$(VENV)/bin/pytest -m "not embedded" -n $(TEST_PROCESSES) --dist worksteal
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} CELERY_BROKER_URL=$(TEST_AMQP_URL) \
		$(VENV)/bin/pytest -m "not embedded" $(AMQP_TESTS)
	env -u DATABASE_URL -u CELERY_BROKER_URL TASKHUB_VAR_DIR=$(CURDIR)/var/test-embedded \
		$(VENV)/bin/pytest -m embedded

bench: install
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
		$(PY) -m bench

clean:
	rm -rf $(VENV) var
