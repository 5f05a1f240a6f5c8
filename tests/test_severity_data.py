"""COVID-19 severity scores as data: `data import severity` (Cohen's score table joined to metadata.csv) and
`data build --task severity` (rows with both scores, patient-grouped folds)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shared_data_or_skip
from covidxr.cli import main
from covidxr.data import SourceError, build, import_severity, load_manifest
from covidxr.data.severity import NO_SCORE, extent_bands, repeated_grouped_folds
from covidxr.data.split import split_units
from covidxr.errors import UsageError

HEADER = ("## COVID-19 Pneumonia Severity Scores (Mean of 3 expert raters),,\n"
          "## License: CC BY-SA Creative Commons Attribution-ShareAlike,,\n"
          "filename,geographic_mean,opacity_mean\n")
SCORES = {"img0.jpg": (6.0, 4.0), "img1.jpg": (2.7, 2.0), "img2.jpg": (0.0, 0.3), "img3.jpg": (8.0, 6.0),
          "img4.jpg": (1.3, 1.0), "img9.jpg": (4.7, 3.3), "img6.jpg": (3.0, 2.0), "absent.jpg": (5.0, 4.0),
          "ghost.png": (1.0, 1.0)}


def write_scores(path: Path, rows: dict[str, tuple] = SCORES, header: str = HEADER) -> Path:
    path.write_text(header + "".join(f"{name},{extent},{opacity}\n" for name, (extent, opacity) in rows.items()))
    return path


@pytest.fixture
def scores_csv(cohen_dir) -> Path:
    (cohen_dir / "annotations").mkdir()
    return write_scores(cohen_dir / "annotations" / "covid-severity-scores.csv")


def test_import_joins_metadata_and_drops_per_reason(cohen_dir, scores_csv):
    result = import_severity(scores_csv, cohen_dir)
    manifest = result.manifest.assign(name=result.manifest["path"].map(lambda p: Path(p).name))
    assert sorted(manifest["name"]) == ["img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg", "img4.jpg", "img9.jpg",
                                        "img9.jpg"]
    assert sorted(manifest.loc[manifest["name"] == "img9.jpg", "patient_id"]) == ["cohen:10", "cohen:9"]
    first = manifest.set_index("name").loc["img0.jpg"]
    assert (first["severity_extent"], first["severity_opacity"]) == (6.0, 4.0)
    assert first["patient_id"] == "cohen:1" and first["site"] == "Hospital A, Milan, Italy"
    assert str(manifest["severity_extent"].dtype) == "Float64"
    reasons = result.dropped.set_index(result.dropped["path"].map(lambda p: Path(p).name))["reason"].to_dict()
    assert reasons == {"ghost.png": "not in metadata", "img6.jpg": "view", "absent.jpg": "file missing"}
    report = "\n".join(result.report())
    assert "9 scored image(s)" in report and "file missing: absent.jpg" in report
    assert "not in metadata: ghost.png" in report


@pytest.mark.parametrize(("line", "problem"), [
    ("img0.jpg,9.5,1.0", "geographic_mean '9.5' is not a score between 0 and 8"),
    ("img0.jpg,2.0,seven", "opacity_mean 'seven' is not a score between 0 and 6"),
    ("img0.jpg,-1,1.0", "geographic_mean '-1' is not a score between 0 and 8"),
])
def test_a_score_outside_its_range_is_an_error_naming_file_line_and_value(tmp_path, line, problem):
    table = tmp_path / "scores.csv"
    table.write_text(HEADER + "img1.jpg,1.0,1.0\n" + line + "\n")
    with pytest.raises(SourceError, match=f"scores.csv: line 5: {problem}"):
        import_severity(table, tmp_path)


def test_a_table_without_the_score_columns_names_them(tmp_path):
    table = tmp_path / "scores.csv"
    table.write_text("## header\nfilename,extent\nimg0.jpg,1\n")
    with pytest.raises(UsageError, match="no column 'geographic_mean', 'opacity_mean'"):
        import_severity(table, tmp_path)
    table.write_text("## only comments\n")
    with pytest.raises(SourceError, match="no table after its 1 '##' header line"):
        import_severity(table, tmp_path)


def test_a_file_scored_twice_is_an_error(tmp_path):
    table = write_scores(tmp_path / "scores.csv", {"img0.jpg": (1, 1)})
    table.write_text(table.read_text() + "img0.jpg,2,2\n")
    with pytest.raises(SourceError, match="scored twice: img0.jpg"):
        import_severity(table, tmp_path)


def test_build_keeps_scored_rows_and_keeps_units_within_one_fold(cohen_dir, scores_csv, tmp_path):
    imported = import_severity(scores_csv, cohen_dir)
    manifest = imported.manifest.copy()
    manifest.loc[manifest["path"].str.endswith("img4.jpg"), "severity_opacity"] = pd.NA
    built = build([manifest], task="severity", split=(1.0, 0.0, 0.0), folds=2).manifest
    assert len(built) == 6 and built["severity_opacity"].notna().all()
    units = split_units(built)
    assert (built.groupby(units)["fold"].nunique() == 1).all()
    assert set(built["fold"]) == {0, 1}
    assert set(built["label"]) == {"covid", "non-covid"}
    assert NO_SCORE in set(build([manifest], task="severity", split=(1.0, 0.0, 0.0)).dropped["reason"])


def test_build_severity_refuses_balance_and_manifests_without_scores(cohen_dir, scores_csv):
    from covidxr.data import import_cohen

    with pytest.raises(UsageError, match="balance"):
        build([import_severity(scores_csv, cohen_dir)], task="severity", balance=True)
    with pytest.raises(UsageError, match="needs the column\\(s\\) severity_extent, severity_opacity"):
        build([import_cohen(cohen_dir)], task="severity")
    with pytest.raises(UsageError, match="accepted: binary, three-class, severity"):
        build([import_cohen(cohen_dir)], task="regression")


def test_cli_import_and_build_severity_round_trip_the_scores(cohen_dir, scores_csv, tmp_path, capsys):
    out = tmp_path / "severity.csv"
    assert main(["data", "import", "severity", str(scores_csv), "--root", str(cohen_dir), "-o", str(out)]) == 0
    assert "file missing: absent.jpg" in capsys.readouterr().out
    assert load_manifest(out)["severity_extent"].notna().all()
    built = tmp_path / "built.csv"
    assert main(["data", "build", str(out), "--task", "severity", "--split", "1,0,0", "--folds", "2",
                 "-o", str(built)]) == 0
    assert main(["data", "check", str(built)]) == 0
    assert sorted(load_manifest(built)["severity_extent"]) == [0.0, 1.3, 2.7, 4.7, 4.7, 6.0, 8.0]
    assert main(["data", "build", str(out), "--task", "severity", "--balance", "-o", str(built)]) == 2
    with pytest.raises(SystemExit) as usage:  # --root is required
        main(["data", "import", "severity", str(scores_csv), "-o", str(out)])
    assert usage.value.code == 2


def test_repeated_folds_differ_between_repeats_and_never_split_a_unit():
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(40)], "patient_id": [f"p{k // 2}" for k in range(40)],
                          "dup_group": "", "severity_extent": np.linspace(0, 8, 40)})
    folds = repeated_grouped_folds(table, folds=4, repeats=3, seed=0)
    assert folds.shape == (3, 40)
    for repeat in folds:
        assert (pd.Series(repeat).groupby(table["patient_id"]).nunique() == 1).all()
        assert sorted(set(repeat)) == [0, 1, 2, 3]
    assert not np.array_equal(folds[0], folds[1])
    assert extent_bands(pd.Series([0.0, 2.6, 2.7, 5.4, 8.0])).tolist() == ["extent 0", "extent 0", "extent 1",
                                                                          "extent 2", "extent 2"]
    with pytest.raises(UsageError, match="between 2 and the 20 patient units"):
        repeated_grouped_folds(table, folds=21, repeats=1)


@pytest.mark.shared_data
def test_the_shared_severity_scores_import_with_the_missing_file_named():
    root = shared_data_or_skip() / "covid-chestxray-dataset"
    result = import_severity(root / "annotations" / "covid-severity-scores.csv", root)
    assert len(result.manifest) == 82 and result.manifest["patient_id"].nunique() == 56
    assert result.dropped["reason"].tolist() == ["file missing"]
    assert result.manifest["severity_extent"].between(0, 8).all()
    assert result.manifest["severity_opacity"].between(0, 6).all()
