# One command each on a fresh machine: `make demo`, `make test` (both install first when needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned and installed first: an unpinned torch pulls several GB of CUDA wheels.
TORCH  := torch==2.13.0

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Sparse-view CT on the built-in Shepp-Logan phantom: 256x256, 60 views over 180 deg, 1% noise.
demo: install
	$(BIN)/recon ct --phantom shepp-logan --size 256 --views 60 --noise 0.01 \
		--method fbp --method tv --output demo_output

# The whole suite (slow tests included) plus the docstring examples.
test: install
	$(BIN)/python -m pytest -n 2 --doctest-modules tests operators priors recon data apps

# Everything but the tests marked slow.
test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow" --doctest-modules tests operators priors recon data apps

clean:
	rm -rf $(VENV) demo_output .pytest_cache *.egg-info bench_speed_quick.json bench_tv_quick.json

# CT forward/adjoint speed against ASTRA per slice, ODL and scikit-image, and TV time-to-quality
# against ODL's pdhg (under 2 minutes on 2 cores). The full runs (see README, "Speed") are
#     $(BIN)/recon bench speed --repeats 3 --json bench_speed.json    (256/512, 60/180 views, batches 1/8/32)
#     $(BIN)/recon bench tv --json bench_tv.json                        (256^2, both ODL set-ups, 3 repeats)
bench: install
	$(BIN)/recon bench speed --quick --json bench_speed_quick.json
	$(BIN)/recon bench tv --quick --json bench_tv_quick.json
