import zlib
from pathlib import Path

import pandas as pd
import pytest

from conftest import save_image, write_dicom, xray_pixels
from covidxr.data import COLUMNS, SourceError, import_cohen, import_csv, import_folders
from covidxr.errors import UsageError


def test_cohen_import_drops_in_contract_order_and_keeps_double_listed_files(cohen_dir):
    result = import_cohen(cohen_dir)
    manifest, dropped = result.manifest, result.dropped
    assert list(manifest.columns[: len(COLUMNS)]) == list(COLUMNS)
    reasons = dropped.set_index(dropped["path"].map(lambda p: Path(p).name))["reason"].to_dict()
    assert reasons == {"img5.jpg": "modality", "volume.nii.gz": "modality", "img6.jpg": "view",
                       "absent.jpg": "file missing", "broken.png": "unreadable"}
    assert "not an image" in dropped.loc[dropped["reason"] == "unreadable", "detail"].item()
    assert len(manifest) == 9
    double = manifest[manifest["path"].str.endswith("img9.jpg")]
    assert sorted(double["patient_id"]) == ["cohen:10", "cohen:9"]
    assert double["image_id"].nunique() == 2 and double["sha256"].nunique() == 1
    assert manifest["image_id"].is_unique


def test_cohen_import_keeps_metadata_site_and_licence(cohen_dir):
    manifest = import_cohen(cohen_dir).manifest
    by_file = manifest.assign(name=manifest["path"].map(lambda p: Path(p).name)).set_index("name")
    assert by_file.loc["img0.jpg", "site"] == "Hospital A, Milan, Italy"
    assert by_file.loc["img2.jpg", "site"] == "example.org"
    assert by_file.loc["img3.jpg", "license"] == "unknown"
    assert by_file.loc["img0.jpg", "license"] == "CC BY"
    assert by_file.loc["img3.jpg", "view"] == "AP Supine"
    assert by_file.loc["img0.jpg", "width"] == 96 and len(by_file.loc["img0.jpg", "phash"]) == 16
    assert by_file.loc["img9.jpg", "age"].tolist() == [65.0, 65.0]


def test_cohen_import_notes_unlisted_files_and_honours_views(cohen_dir):
    result = import_cohen(cohen_dir, views=("PA",))
    assert any("3 file(s)" in line and "unlisted.png" in line for line in result.lines)
    assert set(result.manifest["view"]) == {"PA"}
    assert (result.dropped["reason"] == "view").sum() == 3


def test_cohen_import_of_a_folder_without_metadata_names_the_file(tmp_path):
    with pytest.raises(SourceError, match="metadata.csv: table not found"):
        import_cohen(tmp_path)


def test_csv_import_reads_the_rsna_layout_with_an_unnamed_index(normals_csv):
    result = import_csv(normals_csv, image_col="filename", label_col="finding",
                        root=normals_csv.parent / "normal_dataset", source="rsna")
    manifest = result.manifest
    assert len(manifest) == 20 and result.dropped.empty
    assert manifest["patient_id"].nunique() == 20
    assert manifest["patient_id"].str.startswith("rsna:").all()
    assert set(manifest["finding"]) == {"Normal"} and set(manifest["site"]) == {"rsna"}


def test_csv_import_names_an_unknown_column_and_the_ones_present(normals_csv):
    with pytest.raises(UsageError) as error:
        import_csv(normals_csv, image_col="image", label_col="finding")
    assert "'image'" in str(error.value) and "'filename'" in str(error.value) and "'Unnamed: 0'" in str(error.value)


def test_csv_import_reports_malformed_tables(tmp_path):
    table = tmp_path / "bad.csv"
    table.write_text('image,finding\n"a.png,Normal\nb.png,Normal,extra,fields\n')
    with pytest.raises(SourceError, match="bad.csv: malformed CSV"):
        import_csv(table, image_col="image", label_col="finding")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SourceError, match="empty.csv: the table is empty"):
        import_csv(empty, image_col="image", label_col="finding")


def test_csv_import_of_a_covid_collection_layout_keeps_patients_and_unknown_findings(tmp_path):
    root = tmp_path / "Figure1-COVID-chestxray-dataset"
    rows = []
    for index, (patient, finding, notes, view) in enumerate([
        ("p1", "COVID-19", "", "PA"), ("p1", "COVID-19", "", "AP"), ("p2", "", "Inconclusive, awaiting test", "PA"),
        ("p3", "Pneumonia", "", "L"), ("p4", "No finding", "", "PA"),
    ]):
        save_image(xray_pixels(200 + index), root / "images" / f"i{index}.png")
        rows.append(f'{patient},0,M,50,{finding},,,,{view},X-ray,i{index}.png,"{notes}"')
    header = "patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,imagename,notes"
    (root / "metadata.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    result = import_csv(root / "metadata.csv", image_col="imagename", label_col="finding",
                        patient_col="patientid", root=root / "images", source="figure1")
    manifest = result.manifest
    assert result.dropped["reason"].tolist() == ["view"]
    assert manifest["patient_id"].tolist() == ["figure1:p1", "figure1:p1", "figure1:p2", "figure1:p4"]
    assert manifest["finding"].tolist() == ["COVID-19", "COVID-19", "", "No finding"]
    assert set(manifest["sex"]) == {"M"} and set(manifest["age"]) == {50.0}


def _write_dicom(path: Path, patient_id: str, modality: str = "CR") -> Path:
    return write_dicom(path, xray_pixels(zlib.crc32(patient_id.encode()) % 1000), patient_id, modality=modality)


def test_folders_import_maps_class_folders_kaggle_patients_and_dicom(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDXR_SECRET_KEY_FILE", str(tmp_path / "key"))
    root = tmp_path / "chest_xray"
    save_image(xray_pixels(1), root / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    save_image(xray_pixels(2), root / "test" / "PNEUMONIA" / "person1_virus_6.jpeg")
    save_image(xray_pixels(3), root / "train" / "NORMAL" / "IM-0115-0001.jpeg")
    save_image(xray_pixels(4), root / "train" / "Covid" / "sub" / "x.png")
    _write_dicom(root / "val" / "NORMAL" / "scan.dcm", "MRN-0042")
    _write_dicom(root / "val" / "NORMAL" / "ct.dcm", "MRN-0043", modality="CT")
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    (root / "train" / ".DS_Store").write_bytes(b"\0\0")
    result = import_folders(root, source="kaggle")
    manifest = result.manifest.assign(name=lambda m: m["path"].map(lambda p: Path(p).name)).set_index("name")
    assert manifest.loc["person1_bacteria_1.jpeg", "finding"] == "Pneumonia"
    assert manifest.loc["IM-0115-0001.jpeg", "finding"] == "Normal"
    assert manifest.loc["x.png", "finding"] == "COVID-19"
    assert manifest.loc["person1_bacteria_1.jpeg", "patient_id"] == manifest.loc["person1_virus_6.jpeg", "patient_id"]
    dicom = manifest.loc["scan.dcm"]
    assert dicom["modality"] == "CR" and dicom["view"] == "PA" and dicom["sex"] == "F" and dicom["age"] == 45
    assert dicom["patient_id"].startswith("kaggle:") and "MRN-0042" not in dicom["patient_id"]
    reasons = dict(zip(result.dropped["path"].map(lambda p: Path(p).name), result.dropped["reason"]))
    assert reasons == {"notes.txt": "unreadable", "ct.dcm": "modality"}
    assert result.lines[-1] == "note: 1 hidden file(s) skipped"


def test_dicom_identifiers_never_reach_the_written_files(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDXR_SECRET_KEY_FILE", str(tmp_path / "key"))
    _write_dicom(tmp_path / "data" / "covid" / "a.dcm", "MRN-7777")
    _write_dicom(tmp_path / "data" / "covid" / "b.dcm", "MRN-7777")
    result = import_folders(tmp_path / "data")
    out = result.save(tmp_path / "out" / "m.csv")
    text = out.read_text() + (tmp_path / "out" / "m.dropped.csv").read_text()
    assert "MRN-7777" not in text and "Doe" not in text and "19700101" not in text
    assert result.manifest["patient_id"].nunique() == 1
    again = import_folders(tmp_path / "data")
    assert again.manifest["patient_id"].tolist() == result.manifest["patient_id"].tolist()


def test_import_round_trips_csv_and_parquet(cohen_dir, tmp_path):
    from covidxr.data import load_dropped, load_manifest

    result = import_cohen(cohen_dir)
    for name in ("m.csv", "m.parquet"):
        result.save(tmp_path / name)
        loaded = load_manifest(tmp_path / name)
        pd.testing.assert_frame_equal(loaded, result.manifest, check_dtype=False)
        assert len(load_dropped(tmp_path / name)) == len(result.dropped)
