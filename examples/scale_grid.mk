# Fan a compound-scaling grid out over make jobs: every point trains in its own process, then the best on
# validation is collected. Same choice as the sequential `mncli scale ... --grid` run.
#
#   make -f examples/scale_grid.mk -j2 ARCH=arch.safetensors OUT=scaled.safetensors PHI=3.5 \
#        DATASET=fashion-mnist EPOCHS=5
#
# POINTS lists the grid indices (default: the 7 points of EC2T's CIFAR grid); with your own grid pass
# GRID='--grid-points "1.4,1.2 1.2,1.3 1.0,1.4"' POINTS="0 1 2". SCALE_OPTS reaches every point
# (budgets, training options, --seed, ...): each point must see the same options for --collect to
# group them. Include this file from your own Makefile to chain it with search and train.

MNCLI ?= mncli
ARCH ?= arch.safetensors
OUT ?= scaled.safetensors
PHI ?= 3.5
DATASET ?= fashion-mnist
EPOCHS ?= 5
POINTS ?= 0 1 2 3 4 5 6
GRID ?=
SCALE_OPTS ?=

SCALE_STEM := $(patsubst %.safetensors,%,$(OUT))
SCALE_POINT_FILES := $(foreach k,$(POINTS),$(SCALE_STEM).point$(k).safetensors)

.PHONY: scale-grid
scale-grid: $(OUT)

$(OUT): $(SCALE_POINT_FILES)
	$(MNCLI) scale $(ARCH) --collect --phi $(PHI) -d $(DATASET) --epochs $(EPOCHS) $(GRID) $(SCALE_OPTS) -o $@

$(SCALE_STEM).point%.safetensors: $(ARCH)
	$(MNCLI) -q scale $(ARCH) --point $* --phi $(PHI) -d $(DATASET) --epochs $(EPOCHS) $(GRID) $(SCALE_OPTS) -o $(OUT)
