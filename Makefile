# covidxr: `make demo` runs the main job, `make test` the tests (both install first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Data: DATA=dir when given, else ../shared/data when present, else downloaded into ./data
DATA ?= $(if $(wildcard ../shared/data/covid-chestxray-dataset/metadata.csv),../shared/data,data)
OUT ?= out/demo
SHIP := out/default-model
LUNGS := out/lung-model
V7 := $(DATA)/v7labs-covid-19-xray-dataset/annotations/covid-only.zip

# Debian packages the tests use: Chromium (the HTML report and the page, headless), Orthanc + its DICOMweb
# plugin (the PACS round trip), dcmtk (dsrdump validates the SRs).
SYSTEM_PACKAGES := chromium orthanc orthanc-dicomweb dcmtk

.PHONY: install system-deps system-packages test docs demo data bench default-model lung-teacher lung-model input-check \
	shipped-calibration clean

install: system-deps $(VENV)/.installed

# Installs the missing SYSTEM_PACKAGES with apt-get as root; otherwise names them (the tests that need them skip).
system-deps:
	@.ci/apt-packages $(SYSTEM_PACKAGES) || echo "covidxr: continuing without them; the tests that need them skip"

system-packages:
	@echo $(SYSTEM_PACKAGES)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -q

# The documentation site into site/ (mkdocs.yml); --strict fails on a broken link, include or nav entry.
docs: install notebooks
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The tutorial notebooks (examples/*.py, jupytext percent scripts) executed on $(DATA) into docs/tutorial/*.ipynb
# (not committed), which the site renders; tests/test_notebooks.py runs the same scripts. About 2 min on 2 cores.
NOTEBOOKS := $(patsubst examples/%.py,docs/tutorial/%.ipynb,$(wildcard examples/[0-9]*.py))
.PHONY: notebooks
notebooks: install $(NOTEBOOKS)
docs/tutorial/%.ipynb: examples/%.py examples/notebook_data.py
	COVIDXR_DATA="$(abspath $(DATA))" $(BIN)/jupytext --to ipynb --execute --run-path examples -o $@ $<

data: install
	@test -f "$(DATA)/covid-chestxray-dataset/metadata.csv" || $(BIN)/covidxr data download cohen --to "$(DATA)"
	@test -f "$(DATA)/rsna-normal-224/normal_xray_dataset.csv" || $(BIN)/covidxr data download rsna-normal --to "$(DATA)"

# Import both sources and build a binary, patient-level split dataset into $(DIR).
define build_dataset
	$(BIN)/covidxr data import cohen "$(DATA)/covid-chestxray-dataset" -o $(1)/cohen.csv
	$(BIN)/covidxr data import csv "$(DATA)/rsna-normal-224/normal_xray_dataset.csv" --image-col filename \
		--label-col finding --root "$(DATA)/rsna-normal-224/normal_dataset" --source rsna -o $(1)/rsna.csv
	$(BIN)/covidxr data build $(1)/cohen.csv $(1)/rsna.csv --task binary --folds 5 -o $(1)/binary.csv
	$(BIN)/covidxr data check $(1)/binary.csv
endef

demo: data
	$(call build_dataset,$(OUT))
	$(BIN)/covidxr data summary $(OUT)/binary.csv
	$(BIN)/covidxr prepare $(OUT)/binary.csv --size 256 -o $(OUT)/cache --preview 8 --preview-out $(OUT)/prepare-preview.png
	rm -rf $(OUT)/run-demo
	$(BIN)/covidxr train --config demo --data $(OUT)/binary.csv --cache $(OUT)/cache -o $(OUT)/run-demo
	$(BIN)/covidxr evaluate --run $(OUT)/run-demo --cache $(OUT)/cache
	$(BIN)/covidxr audit --run $(OUT)/run-demo --cache $(OUT)/cache
	$(BIN)/covidxr report --run $(OUT)/run-demo --cache $(OUT)/cache -o $(OUT)/report.html
	$(BIN)/python -c "import pandas as p; m = p.read_csv('$(OUT)/run-demo/manifest.csv'); \
		print('\n'.join(m[m.split == 'test'].groupby('label').head(4).path))" > $(OUT)/test-images.txt
	xargs $(BIN)/covidxr predict --run $(OUT)/run-demo --csv $(OUT)/predictions-demo-run.csv < $(OUT)/test-images.txt
	xargs $(BIN)/covidxr predict --csv $(OUT)/predictions-shipped-model.csv < $(OUT)/test-images.txt
	@echo "the demo run's predictions:" && cat $(OUT)/predictions-demo-run.csv
	@echo "the shipped model's predictions:" && cat $(OUT)/predictions-shipped-model.csv
	@echo "demo outputs are in $(OUT)/: manifests, prepare-preview.png, run-demo/ (model, metrics, evaluation/), report.html, predictions-*.csv"

# Re-create the lung segmenter shipped in the package (src/covidxr/shipped/lungs) in two steps. The teacher: a
# U-Net with an EfficientNet-Lite0 encoder at 256 px trained on Cohen's images and the V7 Labs lung outlines
# (github.com/v7labs/covid-19-xray-dataset: annotations/covid-only.zip under $(DATA)) into $(LUNGS) (5 min on 2
# CPU cores). The shipped student: a small plain U-Net at 128 px trained on the teacher's masks of every frontal
# image of both sources (its validation and test patients left out) and the training outlines, then evaluated
# into $(LUNG_STUDENT)/evaluation, which writes its card. Seeded; an interrupted training continues from its
# last epoch when started again (delete the folder to start afresh).
# The shipped classifier, its input check and its severity head read the segmenter's masks: after replacing it,
# refit and retrain them in this order: `make input-check default-model severity-model shipped-calibration`
# (the last records the refitted input check in the new model's model.json and card).
LUNG_STUDENT := out/lung-student
lung-teacher: data
	@test -f "$(V7)" || { echo "missing $(V7): put the V7 Labs annotations (covid-only.zip) there"; exit 1; }
	$(BIN)/python -m covidxr.lungs.train --data "$(DATA)" -o $(LUNGS) --ship $(LUNGS)/shipped

lung-model: lung-teacher
	$(BIN)/python -m covidxr.lungs.train --data "$(DATA)" -o $(LUNG_STUDENT) --network tiny --size 128 \
		--distil-from $(LUNGS)/shipped --epochs 6 --batch-size 16 --learning-rate 0.003 --ship src/covidxr/shipped/lungs
	$(BIN)/python -m covidxr.evaluation.lungs --data "$(DATA)" -o $(LUNG_STUDENT)/evaluation

# Re-create the severity head shipped in the package (src/covidxr/shipped/severity.json + severity-features.onnx)
# from Cohen's severity scores, and the study behind its figures (docs/severity.md) in out/severity/study.
# Seeded; about 10 minutes on 2 CPU cores.
.PHONY: severity-model
SEVERITY_SCORES := $(DATA)/covid-chestxray-dataset/annotations/covid-severity-scores.csv
severity-model: data
	$(BIN)/covidxr data import severity "$(SEVERITY_SCORES)" --root "$(DATA)/covid-chestxray-dataset" -o out/severity/scores.csv
	$(BIN)/covidxr data build out/severity/scores.csv --task severity --split 1,0,0 --folds 5 -o out/severity/all.csv
	$(BIN)/python -m covidxr.reporting.severity --data out/severity/all.csv -o out/severity/study --ship

# Re-create the model shipped in the package (about 12 minutes on 2 CPU cores after the install): float16
# weights, model.json, model card, and model.onnx (parity-checked) so predict and serve run without PyTorch.
default-model: data
	$(call build_dataset,$(SHIP))
	rm -rf $(SHIP)/run
	$(BIN)/covidxr train --config default --data $(SHIP)/binary.csv -o $(SHIP)/run
	$(BIN)/covidxr evaluate --run $(SHIP)/run
	$(BIN)/covidxr audit --run $(SHIP)/run
	$(BIN)/covidxr report --run $(SHIP)/run -o $(SHIP)/report.html
	$(BIN)/python -m covidxr.models.shipped $(SHIP)/run
	$(BIN)/covidxr export --format onnx --run "$$($(BIN)/python -c 'from covidxr.runs import shipped_dir; print(shipped_dir())')"

# Fit the input check shipped in the package (src/covidxr/shipped/input_check.json): frontal radiographs of both
# sources in the shipped model's own split against Cohen's CT slices and lateral views and non-medical images; its
# figures on held-out images go to out/input-check/figures.json and into the JSON. About 8 minutes on 2 CPU cores.
input-check: data
	$(call build_dataset,$(SHIP))
	$(BIN)/python -m covidxr.inputcheck.fit --data "$(DATA)" --manifest $(SHIP)/binary.csv -o out/input-check \
		--ship src/covidxr/shipped/input_check.json

# Give the shipped model its calibration and operating points refitted on its own validation split (`covidxr
# calibrate`), the input check fitted by `make input-check` (recorded in model.json and the card), and its
# test-split figures in the card: after `make default-model`, or after refitting the input check.
shipped-calibration: data
	$(call build_dataset,$(SHIP))
	rm -rf $(SHIP)/calibrated
	$(BIN)/covidxr calibrate --data $(SHIP)/binary.csv --split val -o $(SHIP)/calibrated
	$(BIN)/covidxr evaluate --run $(SHIP)/calibrated --data $(SHIP)/binary.csv --split test
	$(BIN)/python -m covidxr.models.shipped --calibration $(SHIP)/calibrated \
		$(SHIP)/calibrated/evaluation/evaluate-binary-test.json

bench: install
	cd benchmarks && for script in bench_border.py bench_prepare.py bench_loader.py bench_head_training.py \
		bench_train_step.py bench_inference.py bench_predict_cli.py bench_segment.py bench_scale.py; do \
		../$(BIN)/python $$script 2>/dev/null || exit 1; done

clean:
	rm -rf $(VENV) out site .pytest_cache
