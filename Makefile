# dfseg: the two commands a fresh machine needs are `make demo` and `make test`.
# Both create .venv when it is missing and install dfseg with torch pinned by constraints.txt:
# `make demo` what dfseg needs to run, `make test` / `make lint` / `make bench` the dev extras too.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dfseg-installed
RUNTIME := $(VENV)/.dfseg-runtime
PIP := $(PY) -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=

.PHONY: demo demo-quick test test-fast bench lint install model model-swinunetr clean-venv

$(RUNTIME): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e .
	@touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PIP) install -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(RUNTIME)
	$(VENV)/bin/dfseg demo

demo-quick: $(RUNTIME)
	$(VENV)/bin/dfseg demo --quick

# The model dfseg ships (bundles/dfseg_attention_unet/models): the demo's pipeline on a larger, mixed cohort
# (96 mice over the three phantom variants, half of them on domain-randomised scanners and animals,
# calibrated per spectrum), 100 epochs; packaged with its card, the weights' hash (models/large_files.yml)
# and the bundle metadata's eval_metrics. About 32 minutes on 2 CPU cores (models/README.md there).
model: $(STAMP)
	$(VENV)/bin/dfseg demo --seed 0 --subjects 96 --variant standard fine coarse --randomise-fraction 0.5 \
		--randomise-ranges data_manifests/model_randomise_ranges.yaml --max-epochs 100 --time-budget 0 \
		--out runs/model --overwrite
	$(PY) -c "from dfseg.resources import ship_model; ship_model('runs/model', 'bundles/dfseg_attention_unet')"

# The SwinUNETR of bundles/dfseg_swinunetr/models: the demo with that bundle, on a GPU (a 3.5-minute budget).
model-swinunetr: $(STAMP)
	$(VENV)/bin/dfseg demo --bundle dfseg_swinunetr --seed 0 --time-budget 3.5 --max-epochs 1000 --workers $$(nproc) \
		--out runs/model-swinunetr --overwrite
	$(PY) -c "from dfseg.resources import ship_model; ship_model('runs/model-swinunetr', 'bundles/dfseg_swinunetr')"

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# left out: bench/peer_nnunet.py (a cohort, its own nnU-Net environment and an hour; docs/peer_nnunet.md)
# bench/demo_recipe.py (a finished demo run and about 10 minutes; docs/demo.md), bench/generalisation.py
# (five trainings, about 70 minutes; docs/generalisation.md) and bench/randomisation_ablation.py
# (eleven trainings, about an hour; docs/generalisation.md), bench/lesion_fit.py (a finished demo run and
# 2 minutes; docs/demo.md), bench/vessel_ablation.py (a demo run, about 12 minutes; docs/demo.md) and
# bench/user_path.py (a generalisation folder, about 2 minutes; docs/generalisation.md)
bench: $(STAMP)
	@for b in bench/[!_]*.py; do case "$$b" in bench/peer_nnunet.py|bench/demo_recipe.py|bench/generalisation.py|bench/randomisation_ablation.py|bench/lesion_fit.py|bench/vessel_ablation.py|bench/user_path.py) continue;; esac; \
	  echo "== $$b"; $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check dfseg tests bench

clean-venv:
	rm -rf $(VENV)
