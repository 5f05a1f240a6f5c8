"""Integration on the real shared data (../shared/data): import, build, the data README's known duplicates."""

import json

import pytest

from conftest import shared_data_or_skip
from covidxr.cli import main
from covidxr.data import load_manifest

DOUBLE_LISTED = ["000001-24.jpg", "000006-17.jpg", "000007-15.jpg", "000001-27.jpg"]
SAME_PEOPLE = [("97", "178"), ("78", "201"), ("192", "196"), ("137", "202")]


@pytest.fixture(scope="module")
def shared_build(tmp_path_factory):
    data = shared_data_or_skip()
    out = tmp_path_factory.mktemp("shared")
    assert main(["data", "import", "cohen", str(data / "covid-chestxray-dataset"), "-o", str(out / "cohen.csv")]) == 0
    assert main(["data", "import", "csv", str(data / "rsna-normal-224" / "normal_xray_dataset.csv"),
                 "--image-col", "filename", "--label-col", "finding", "--source", "rsna",
                 "--root", str(data / "rsna-normal-224" / "normal_dataset"), "-o", str(out / "rsna.parquet")]) == 0
    assert main(["data", "build", str(out / "cohen.csv"), str(out / "rsna.parquet"), "--task", "binary",
                 "--folds", "5", "-o", str(out / "binary.csv")]) == 0
    return out


def test_cohen_import_counts(shared_build):
    cohen = load_manifest(shared_build / "cohen.csv")
    assert len(cohen) == 468
    assert cohen["patient_id"].str.startswith("cohen:").all()
    assert set(cohen["view"]) == {"PA", "AP", "AP Supine"}
    assert set(cohen["modality"]) == {"X-ray"}


def test_summary_json_of_the_shared_build(shared_build, capsys):
    capsys.readouterr()
    assert main(["data", "summary", str(shared_build / "binary.csv"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 5468 and summary["by_source"]["rsna"] == {"non-covid": 5000}
    assert summary["by_label"]["covid"] == 378
    assert summary["dropped"] == {"modality": 83, "view": 36, "file missing": 10}
    assert summary["leaks"] == 0 and summary["largest_duplicate_group"] <= 20
    assert set(summary["by_split"]) == {"train", "val", "test"}


def test_data_check_passes(shared_build):
    assert main(["data", "check", str(shared_build / "binary.csv")]) == 0


def test_known_duplicates_share_a_group_and_a_split(shared_build):
    manifest = load_manifest(shared_build / "binary.csv")
    name = manifest["path"].str.rsplit("/", n=1).str[-1]
    for filename in DOUBLE_LISTED:
        rows = manifest[name == filename]
        assert len(rows) == 2 and rows["dup_group"].nunique() == 1 and rows["split"].nunique() == 1, filename
    for first, second in SAME_PEOPLE:
        rows = manifest[manifest["patient_id"].isin([f"cohen:{first}", f"cohen:{second}"])]
        groups_of = rows.groupby("dup_group")["patient_id"].nunique()
        assert (groups_of == 2).any(), (first, second)
        assert rows["split"].nunique() == 1, (first, second)
    series = manifest[manifest["patient_id"] == "cohen:178"]
    partners = manifest[manifest["dup_group"].isin(series["dup_group"]) & (manifest["patient_id"] == "cohen:97")]
    assert len(partners) == 4, "the 97/178 series: four images of 178 are images of 97"
