# covidxr: `make demo` runs the main job, `make test` the tests (both install first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
OUT ?= out/demo

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

demo: install
	@test -f "$(DATA)/covid-chestxray-dataset/metadata.csv" || { echo "No data in $(DATA): give DATA=dir holding covid-chestxray-dataset/ and rsna-normal-224/"; exit 1; }
	$(BIN)/covidxr data import cohen "$(DATA)/covid-chestxray-dataset" -o $(OUT)/cohen.csv
	$(BIN)/covidxr data import csv "$(DATA)/rsna-normal-224/normal_xray_dataset.csv" --image-col filename \
		--label-col finding --root "$(DATA)/rsna-normal-224/normal_dataset" --source rsna -o $(OUT)/rsna.csv
	$(BIN)/covidxr data build $(OUT)/cohen.csv $(OUT)/rsna.csv --task binary --folds 5 -o $(OUT)/binary.csv
	$(BIN)/covidxr data check $(OUT)/binary.csv
	$(BIN)/covidxr data summary $(OUT)/binary.csv
	$(BIN)/covidxr prepare $(OUT)/binary.csv --size 256 -o $(OUT)/cache --preview 8 --preview-out $(OUT)/prepare-preview.png
	rm -rf $(OUT)/run-demo
	$(BIN)/covidxr train --config demo --data $(OUT)/binary.csv --cache $(OUT)/cache -o $(OUT)/run-demo
	$(BIN)/covidxr evaluate --run $(OUT)/run-demo --cache $(OUT)/cache
	$(BIN)/covidxr audit --run $(OUT)/run-demo --cache $(OUT)/cache
	$(BIN)/covidxr report --run $(OUT)/run-demo --cache $(OUT)/cache -o $(OUT)/report.html
	$(BIN)/python -c "import pandas as p; m = p.read_csv('$(OUT)/run-demo/manifest.csv'); \
		print('\n'.join(m[m.split == 'test'].groupby('label').head(4).path))" \
		| xargs $(BIN)/covidxr predict --run $(OUT)/run-demo --csv $(OUT)/predictions.csv
	cat $(OUT)/predictions.csv
	@echo "demo outputs are in $(OUT)/: manifests, cache/, run-demo/ (model, metrics, evaluation/), report.html"

bench: install
	cd benchmarks && for script in bench_border.py bench_prepare.py bench_loader.py bench_head_training.py \
		bench_train_step.py; do \
		../$(BIN)/python $$script 2>/dev/null || exit 1; done

clean:
	rm -rf $(VENV) out .pytest_cache
