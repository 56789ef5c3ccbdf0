# Two entry points: `make demo` and `make test`. Both create .venv on first use and
# reinstall only when pyproject.toml changes (the stamp file tracks it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-detection demo-segmentation test fashion-mnist clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch and torchvision are pinned here (the releases this machine carries);
# the package itself only asks for a range.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/visiondojo demo

# Detection on scenes composed from Fashion-MNIST items (a few minutes on 2 cores).
demo-detection: $(STAMP) fashion-mnist
	$(VENV)/bin/visiondojo demo --task detection

# Segmentation of the same scenes' semantic masks (a few minutes on 2 cores).
demo-segmentation: $(STAMP) fashion-mnist
	$(VENV)/bin/visiondojo demo --task segmentation

test: $(STAMP)
	$(PY) -m pytest -q

# Fashion-MNIST for the benchmarks (Debian package with the IDX files).
fashion-mnist:
	@test -d /usr/share/datasets/fashion-mnist || apt-get install -y dataset-fashion-mnist

clean:
	rm -rf $(VENV) runs bench/results
