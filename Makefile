# mncli: `make demo` and `make test` work on a fresh machine; every target builds .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MNCLI := $(VENV)/bin/mncli
# The torch build this project is tested with; override for another platform, e.g.
#   make install TORCH_PKGS="torch torchvision"
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR := /usr/share/datasets/fashion-mnist
DEMO := demo
RUNS := runs/fashion-mnist

.PHONY: install data test test-all lint format demo fashion-mnist fashion-mnist-baseline fashion-mnist-search bench gpu-check clean help
.PHONY: reproduce-ec2t-cifar100 reproduce-mit-cifar100 reproduce-rl1-cifar100
.PHONY: reproduce-distiller-imagenet reproduce-ec2t-imagenet

help:
	@echo "make demo         install everything, run the compression pipeline on Fashion-MNIST (minutes)"
	@echo "make test         install everything, run the test suite"
	@echo "make lint         ruff check + format check"
	@echo "make fashion-mnist  the Fashion-MNIST chain: >= 92.5 % at score <= 0.0004 (31-46 min on 2 AMX Xeon cores, 78 on 2 Zen 3 EPYC)"
	@echo "                  (SEED=N, DIR=, SMOKE=1); adds the run to bench/results/fashion_mnist_chain.json"
	@echo "make fashion-mnist-baseline  fmnist-net, 20 epochs, >= 92.5 % test (about 15-20 min on 2 cores)"
	@echo "make fashion-mnist-search  search under 5M ops, then searched net vs fmnist-net over 3 seeds"
	@echo "make bench        benchmarks; results in bench/results/"
	@echo "make gpu-check    every stage on CUDA GPUs (one, then all via torchrun) vs CPU; bench/results/gpu_check.json"
	@echo "make reproduce-ec2t-cifar100  EC2T's entry: scale grid -> ternarize ec2t -> fp16 -> score (GPU days)"
	@echo "make reproduce-mit-cifar100   MIT's entry: search -> train -> ternarize ttq --variant mit -> score"
	@echo "make reproduce-rl1-cifar100   reweighted L1: train -> prune reweighted-l1 -> quantize 6/8 bit -> score"
	@echo "make reproduce-distiller-imagenet B1=b1.pth B2=b2.pth  Distiller's entry: import B1 -> prune agp"
	@echo "                  (pruning2 schedule) -> quantize 4 bit + KD from B2, stem fp, FC 2.5 bit -> score"
	@echo "make reproduce-ec2t-imagenet B1=b1.pth  EC2T's entry: import B1 -> ternarize ec2t -> --do-prune ->"
	@echo "                  prune --threshold 0.01 -> fp16 -> score at 256 px"
	@echo "                  B1=/B2=: lukemelas' pretrained efficientnet_pytorch checkpoints (DOWNLOAD=1 fetches them)"
	@echo "                  SMOKE=1: the same chain on small data it writes (CIFAR-100, or JPEGs and random"
	@echo "                  B1/B2 at 64 px; about a minute each); DIR=, DATA_DIR=, DOWNLOAD=1"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PKGS)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed data

data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -f $(FMNIST_DIR)/train-images-idx3-ubyte ]; then \
		true; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing; install it with: sudo apt-get install dataset-fashion-mnist"; \
		echo "(or point MNCLI_DATA at a folder holding the four IDX files)"; \
	fi

# The tests run one thread each (tests/conftest.py), so one pytest-xdist worker per core; the tests
# sharing an expensive module fixture carry one xdist_group, so --dist loadgroup builds it once.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

test: install
	$(PYTEST) -m "not slow"

test-all: install
	$(PYTEST)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench examples reproduce
	$(VENV)/bin/ruff format --check src tests bench examples reproduce

format: $(VENV)/.installed
	$(VENV)/bin/ruff format src tests bench examples reproduce
	$(VENV)/bin/ruff check --fix src tests bench examples reproduce

# The demo: a small network through every stage on Fashion-MNIST, in a few minutes on 2 CPU cores.
demo: install
	bash examples/demo.sh $(DEMO)

# The Fashion-MNIST track of shared/design/BENCHMARKS.md: examples/fashion_mnist.yaml, each step's
# accuracy, score and wall time, the final artifact verified by re-evaluating and re-scoring it, and
# the run added to bench/results/fashion_mnist_chain.json (and its picture). SEED= (default 0) into
# runs/fashion-mnist/seedN (DIR=...); a re-run continues an interrupted step and skips finished ones.
# SMOKE=1: the same chain on generated images, a few steps each (results not recorded).
SEED ?= 0
FM_DIR = $(or $(DIR),$(RUNS)/$(if $(filter 1,$(SMOKE)),smoke-)seed$(SEED))
fashion-mnist: install
	$(PY) reproduce/run.py examples/fashion_mnist.yaml --seed $(SEED) --dir $(FM_DIR) \
		$(if $(filter 1,$(SMOKE)),--smoke) $(if $(DATA_DIR),--data-dir $(DATA_DIR))
	$(MNCLI) verify $(FM_DIR)/quantize.safetensors --reproduce \
		$(if $(filter 1,$(SMOKE)),--data-dir $(FM_DIR)/data,$(if $(DATA_DIR),--data-dir $(DATA_DIR)))
	$(if $(filter 1,$(SMOKE)),,$(PY) bench/fashion_mnist_chain.py $(FM_DIR))

# The Fashion-MNIST baseline of the training issue: fmnist-net, 20 epochs.
fashion-mnist-baseline: install
	bash examples/fmnist_baseline.sh runs/fmnist-baseline

# Search under 5M ops, then the searched net against fmnist-net, both over SEEDS (default 0 1 2).
fashion-mnist-search: install
	bash examples/fmnist_search.sh runs/fmnist-search

bench: install
	$(PY) bench/train_throughput.py
	$(PY) bench/score_at_scale.py
	$(PY) bench/supernet_single_path.py

# Every stage at smoke size on one GPU, then all of them via torchrun (bf16, fp16), against the CPU run;
# exits 2 on a machine without CUDA. GPU_CHECK_OPTS, e.g. "--gpus 2 --precisions bf16" or "--dry-run".
gpu-check: install
	@$(PY) bench/gpu_check.py $(GPU_CHECK_OPTS)

# The 2019 entries, each from its recipe reproduce/NAME.yaml, into runs/reproduce/NAME (DIR=...); the
# ImageNet ones start from the pretrained checkpoints B1= (and B2=) name, or DOWNLOAD=1 fetches.
# SMOKE=1 runs the same chain on small data and random checkpoints it writes, in
# runs/reproduce-smoke/NAME. A re-run skips the finished steps and continues an interrupted one
# (reproduce/README.md).
reproduce-ec2t-cifar100 reproduce-mit-cifar100 reproduce-rl1-cifar100 \
reproduce-distiller-imagenet reproduce-ec2t-imagenet: reproduce-%: install
	$(PY) reproduce/run.py reproduce/$*.yaml \
		--dir $(or $(DIR),runs/$(if $(filter 1,$(SMOKE)),reproduce-smoke,reproduce)/$*) \
		$(if $(filter 1,$(SMOKE)),--smoke) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
		$(if $(filter 1,$(DOWNLOAD)),--download) $(if $(B1),--input b1=$(B1)) $(if $(B2),--input b2=$(B2))

clean:
	rm -rf $(DEMO) runs .pytest_cache .ruff_cache
