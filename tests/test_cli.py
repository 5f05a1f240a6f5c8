"""The command line end to end on synthetic layouts: outputs, printed reports and exit codes."""

import json
import time

import pandas as pd
import pytest

from covidxr.cli import main
from covidxr.data import load_manifest, save_manifest


@pytest.fixture
def built(cohen_dir, normals_csv, tmp_path, capsys):
    assert main(["data", "import", "cohen", str(cohen_dir), "-o", str(tmp_path / "cohen.csv")]) == 0
    assert main(["data", "import", "csv", str(normals_csv), "--image-col", "filename", "--label-col", "finding",
                 "--root", str(normals_csv.parent / "normal_dataset"), "--source", "rsna",
                 "-o", str(tmp_path / "rsna.parquet")]) == 0
    assert main(["data", "build", str(tmp_path / "cohen.csv"), str(tmp_path / "rsna.parquet"), "--task", "binary",
                 "--folds", "2", "--seed", "1", "-o", str(tmp_path / "built.csv")]) == 0
    capsys.readouterr()
    return tmp_path / "built.csv"


def test_import_prints_counts_per_reason_in_contract_order(cohen_dir, tmp_path, capsys):
    assert main(["data", "import", "cohen", str(cohen_dir), "-o", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    positions = [out.index(f"  {reason}") for reason in ("modality", "view", "file missing", "unreadable")]
    assert positions == sorted(positions)
    assert "absent.jpg" in out and "broken.png (not an image" in out
    dropped = pd.read_csv(tmp_path / "c.dropped.csv")
    assert dropped["reason"].value_counts().to_dict() == {"modality": 2, "view": 1, "file missing": 1, "unreadable": 1}


def test_summary_json_prints_only_json_with_the_contract_keys(built, capsys):
    assert main(["data", "summary", str(built), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["leaks"] == 0 and summary["images"] == 28
    assert summary["dropped"]["finding unmapped"] == 1 and summary["dropped"]["modality"] == 2


def test_summary_table_shows_sources_splits_and_the_label_table(built, capsys):
    assert main(["data", "summary", str(built)]) == 0
    out = capsys.readouterr().out
    for text in ("by source", "by split", "label table in use", "Streptococcus", "non-covid", "rsna"):
        assert text in out
    assert "28 images of" in out and "[bold]" not in out, "the headline is plain text, not markup printed literally"


def test_check_passes_a_build_and_fails_a_leak_naming_the_patient(built, tmp_path, capsys):
    assert main(["data", "check", str(built)]) == 0
    manifest = load_manifest(built)
    patient = "cohen:1"
    rows = manifest.index[manifest["patient_id"] == patient]
    manifest.loc[rows[0], "split"] = "test" if manifest.loc[rows[1], "split"] != "test" else "train"
    manifest.loc[rows, "fold"] = pd.NA
    save_manifest(manifest, tmp_path / "leaky.csv")
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "leaky.csv")]) == 1
    assert patient in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["data", "build", "x.csv", "--task", "four", "-o", "o.csv"], "invalid choice"),
    (["data", "build", "x.csv", "--task", "binary", "--split", "0.5,0.5", "-o", "o.csv"], "three numbers"),
    (["data", "build", "x.csv", "--task", "binary", "--balance", "0", "-o", "o.csv"], "positive"),
    (["data", "import", "cohen", "d", "--nope", "-o", "o.csv"], "unrecognized arguments"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_column_is_a_usage_error_naming_the_columns(normals_csv, tmp_path, capsys):
    code = main(["data", "import", "csv", str(normals_csv), "--image-col", "path", "--label-col", "finding",
                 "-o", str(tmp_path / "x.csv")])
    assert code == 2
    assert "'path'" in capsys.readouterr().err


def test_failures_exit_1_with_the_file_named(tmp_path, capsys):
    assert main(["data", "summary", str(tmp_path / "none.csv")]) == 1
    assert "none.csv: manifest file not found" in capsys.readouterr().err
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert main(["data", "check", str(tmp_path / "other.csv")]) == 1
    assert "missing column(s) image_id" in capsys.readouterr().err
    assert main(["data", "build", str(tmp_path / "m.txt"), "--task", "binary", "-o", str(tmp_path / "o.csv")]) == 1
    assert "must end in .csv or .parquet" in capsys.readouterr().err


def test_library_errors_name_parameters_and_the_command_line_names_flags(built, tmp_path, capsys):
    from covidxr.data import build
    from covidxr.errors import UsageError

    with pytest.raises(UsageError, match="^folds=50: must be between 2") as error:
        build([built], task="binary", folds=50)
    assert "--folds" not in str(error.value)
    out = ["-o", str(tmp_path / "o.csv")]
    assert main(["data", "build", str(built), "--task", "binary", "--folds", "50"] + out) == 2
    assert "covidxr: usage error: --folds 50: must be between 2" in capsys.readouterr().err
    assert main(["data", "build", str(built), "--task", "binary", "--exclude-license", "(NC"] + out) == 2
    assert "--exclude-license '(NC': not a regular expression" in capsys.readouterr().err
    assert main(["data", "build", str(built), "--task", "binary", "--max-distance", "99"] + out) == 2
    assert "--max-distance 99: must be 0..64 bits" in capsys.readouterr().err
    assert main(["prepare", str(built), "-o", str(tmp_path / "cache"), "--set", "clahe"]) == 2
    assert "--set 'clahe': expected key=value" in capsys.readouterr().err


def test_import_folders_through_the_cli_then_a_preview_with_nothing_prepared(tmp_path, capsys, monkeypatch):
    from conftest import save_image, write_dicom, xray_pixels

    monkeypatch.setenv("COVIDXR_SECRET_KEY_FILE", str(tmp_path / "key"))
    root = tmp_path / "hospital"
    save_image(xray_pixels(1), root / "covid" / "a.png")
    save_image(xray_pixels(2), root / "covid" / "b.jpg")
    save_image(xray_pixels(3), root / "normal" / "c.png")
    (root / "normal" / "broken.png").write_text("<html>not an image</html>")
    write_dicom(root / "normal" / "scan.dcm", xray_pixels(4), patient_id="MRN-0042")
    out = tmp_path / "manifest.csv"
    assert main(["data", "import", "folders", str(root), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept        4  images of 4 patients" in printed and "unreadable: broken.png (not an image" in printed
    assert f"wrote {out} (4 rows)" in printed
    manifest = load_manifest(out)
    assert manifest.groupby("finding").size().to_dict() == {"COVID-19": 2, "Normal": 2}
    assert set(manifest["source"]) == {"hospital"} and "MRN-0042" not in out.read_text()
    assert pd.read_csv(tmp_path / "manifest.dropped.csv")["reason"].tolist() == ["unreadable"]

    for path in manifest["path"]:  # every file changes after the import: nothing can be prepared
        with open(path, "ab") as handle:
            handle.write(b"changed")
    code = main(["prepare", str(out), "-o", str(tmp_path / "cache"), "--size", "32", "--preview", "2",
                 "--preview-out", str(tmp_path / "preview.png")])
    captured = capsys.readouterr()
    assert code == 1 and "failed   4 image(s)" in captured.out and "file changed since import" in captured.out
    assert "covidxr: error: nothing to preview: none of the manifest's 4 image(s) is prepared" in captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "preview.png").exists()


def test_the_progress_rate_is_the_count_over_the_time_since_the_start():
    from rich.progress import Progress

    from covidxr.progress import RateColumn

    column = RateColumn("img")
    progress = Progress(column, disable=True)
    task = progress.add_task("preparing", total=5464)
    assert column.render(progress.tasks[0]).plain == "- img/s"
    time.sleep(0.2)
    progress.update(task, advance=1)
    progress.update(task, advance=5463)  # a whole shard of cached images at once
    shown = column.render(progress.tasks[0]).plain
    assert shown.endswith(" img/s") and 5464 / 5 < float(shown.split()[0].replace(",", "")) <= 5464 / 0.2
