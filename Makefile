# Common tasks. `make install` then `make run` then `make test`.
PY ?= python

.PHONY: install run test test-fast bench clean

install:
	$(PY) -m pip install -e ".[test]"

run:
	$(PY) train.py

test:
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadscope

test-fast:
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "not slow"

clean:
	rm -rf logs outputs multirun .pytest_cache

bench:
	OMP_NUM_THREADS=1 $(PY) -m dbdpo.bench
