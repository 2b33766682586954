PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

$(STAMP): setup.cfg pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15 tests

lint: $(STAMP)
	$(BIN)/ruff check .

# Every sampler on the exact mixture score, then real training of the embedded defaults
# (2-D mixture + MLP, then 8x8 digits + DDPM++): loss and sample quality, untrained vs trained.
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/python -m score_sde_jax.demos.exact --out runs/demo/exact_samplers.png
	$(BIN)/python -m score_sde_jax.demos.train --workdir runs/demo $(DEMO_ARGS)

# Every bench/ script that runs on its own, one table each (BENCHMARKS.md). Left out:
# vs_official.py (needs --official, a score_sde_pytorch checkout, and a Python with torch),
# device_suite.py (an accelerator: bench/device_suite.sh), and the modules they import.
BENCH_NEEDS_MORE := common device_suite official_worker vs_official vs_official_sampling
BENCHES := $(filter-out $(BENCH_NEEDS_MORE:%=bench/%.py),$(sort $(wildcard bench/*.py)))
bench: $(STAMP)
	for f in $(BENCHES); do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
