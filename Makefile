# Entry points. Everything runs inside the project venv with the colcon workspace sourced.
SHELL := /bin/bash
RUN := source scripts/env.sh &&
PYTEST_ARGS ?=

.PHONY: help setup test models models-eval models-ensure lock clean

help:
	@echo "make setup   - create .venv (ROS 2 Jazzy wheels, torch CPU, transformers) and colcon build"
	@echo "make test    - setup if needed, then the whole test suite"
	@echo "make models  - (re)create every model artefact (trains what is out of date; MODELS_ARGS=--force: all)"
	@echo "make models-eval - evaluate the artefacts (reports + model cards in docs/models)"
	@echo "make demo    - the simulated Go2 closed loop through the real nodes (DEMO_ARGS=...)"
	@echo "make bench   - every decoding mode side by side (make bench-quick: smoke settings)"
	@echo "make bench-fleet - the shared-cloud sweep alone: 1-16 robots on one emulated GPU, text and Go2"
	@echo "make lock    - re-pin requirements/constraints.txt from the current .venv"

setup:
	@bash scripts/setup.sh

test: setup models-ensure
	$(RUN) python -m pytest $(PYTEST_ARGS)

.PHONY: faults
# Fault suite (issue 17): every test marked `faults`, long ones included (FAULTS_FULL=1). The soak:
# python test/faults/soak.py --minutes 30; abuse benchmark: python test/faults/abuse.py --seconds 60
faults: setup models-ensure
	$(RUN) FAULTS_FULL=1 python -m pytest -m faults test $(PYTEST_ARGS)

# Builds the cached model folders from committed artefacts (no training).
models-ensure: setup
	@if [ -f scripts/make_models.py ]; then $(RUN) python scripts/make_models.py --ensure; fi

# Trains what is out of date with the code in training/ (MODELS_ARGS=--force: all, from scratch).
models: setup
	$(RUN) python scripts/make_models.py --no-eval $(MODELS_ARGS)

# Re-measures the committed artefacts: reports in models/, model cards in docs/models/.
models-eval: models-ensure
	$(RUN) python scripts/make_models.py --eval-only $(MODELS_ARGS)

lock: setup
	@{ echo "# Exact versions CI tested (pip freeze of a fresh 'make setup'). Regenerate with 'make lock'."; \
	  .venv/bin/python -m pip freeze --exclude-editable | sed -e 's/+cpu$$//'; } > requirements/constraints.txt

clean:
	rm -rf build install log .venv .cache results

.PHONY: bench bench-quick bench-fleet
bench: models-ensure
	$(RUN) python -m bench.run $(BENCH_ARGS)

bench-quick: models-ensure
	$(RUN) python -m bench.run --quick $(BENCH_ARGS)

# The verifier's capacity (robots deciding back to back) at 1, 2, 4, 8 and 16 robots per emulated
# GPU; reports in results/bench-fleet/{go2,text}/ (~31 min on 2 cores). Text runs the serialized and
# the batched verifier only: its robots share one core for their drafts, so it runs far more dilated.
FLEET := --fleet-only --fleet 1 2 4 8 16 --fleet-think-s 0
bench-fleet: models-ensure
	$(RUN) python -m bench.run $(FLEET) --workloads go2 --profiles paper-go2-orin-nx-a100 \
	  --fleet-verifiers serialized batched batched-unmixed batched-steps-only batched-chunked --out results/bench-fleet/go2 $(BENCH_ARGS)
	$(RUN) python -m bench.run $(FLEET) --workloads text --profiles paper-text-nano-a100 \
	  --fleet-verifiers serialized batched --out results/bench-fleet/text $(BENCH_ARGS)

.PHONY: demo
# The simulated Go2 closed loop: DEMO_ARGS="--episodes 5 --rtt-ms 50 --mode speculative_early_exit"
demo: models-ensure
	$(RUN) python scripts/demo.py $(DEMO_ARGS)
