# Two entry points for a fresh machine (Python 3.11 + a C++ compiler):
#   make demo   set up, build, deblur a built-in image
#   make test   set up, build, run the whole test suite
# Both are idempotent: the second run installs and rebuilds nothing.
PY       ?= python3.11
VENV     := .venv
VPY      := $(VENV)/bin/python
DEPS     := $(VENV)/.deps-stamp
BUILT    := $(VENV)/.build-stamp
SOURCES  := $(wildcard csrc/*.cpp csrc/*.h) setup.py pyproject.toml

.PHONY: setup build demo test bench clean

setup: $(DEPS)

$(DEPS): requirements.txt requirements-dev.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $@

# torch comes from the venv (pinned above); --no-build-isolation builds against it.
$(BUILT): $(DEPS) $(SOURCES)
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(BUILT)

demo: $(BUILT)
	$(VPY) -m deconv_ext demo

test: $(BUILT)
	$(VPY) -m pytest -q -n 2 --dist loadfile

bench: $(BUILT)
	$(VPY) benchmarks/bench_cpu.py

clean:
	rm -rf build *.egg-info deconv_ext/_C*.so $(BUILT)
