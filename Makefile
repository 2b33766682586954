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

bench: $(STAMP)
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
