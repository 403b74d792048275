# The two commands of a fresh clone (README): `make train` trains the default tiny model on the
# CPU, `make test` runs the test suite. Both create .venv first if it is missing, with a
# Python >= 3.12 found by scripts/find-python.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: train test venv

train: $(VENV)/.installed
	$(PY) train.py --config configs/tiny_moe.py --workdir runs/tiny

test: $(VENV)/.installed
	$(PY) -m pytest -m "not slow" -n 2 -q

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@python=$$(scripts/find-python) || exit 1; \
	  echo "creating $(VENV) with $$python (pip install -e '.[test]': a few minutes the first time)"; \
	  "$$python" -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e ".[test]"
	@touch $@
